"""Capture store I/O at FLUX.1-dev shapes: write and read speed against raw np.save / np.load.

Writes the two stores capture@k writes — ``calibration.zarr`` (least-squares rows: D = 3072,
``--image-tokens`` + ``--text-tokens`` rows per sample) and ``training.zarr`` (packed noisy latents,
4096 × 64 per sample) — through ``StoreWriter.append``, sample by sample as the capture hooks do,
with the layout of params.yaml's ``capture`` section and each compression choice. In the same run,
in alternating order, the same arrays (already converted to their stored dtype) go through one
``np.save`` per array; the share is the median over rounds of np.save's time / the store's time.
Two regimes: ``cached`` — each write starts from a clean page cache and ends when the data is in
it (a burst that fits in memory: np.save is then a memcpy); ``durable`` — the time includes the
fsync of every file written (what a capture writing GBs per step runs at once the page cache is
full: the disk's speed). Reads
are the consumers' access patterns: solve streams the calibration rows in order
(``iter_rows``), sandwich reads training samples by sorted random index (``read_samples``).

Data: bfloat16 activations with per-channel scales spread over 3 orders of magnitude (FLUX's
hidden states have a few very large channels), so compression sees realistic exponents.

Prints JSON and writes benchmarks/results/capture_io.json.
Run: python benchmarks/capture_io.py [--samples 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from common import report

from fastflux_core.store import StoreReader, StoreWriter, _encode, calibration_specs, training_specs

DIM, N_IMG, C_IN = 3072, 4096, 64  # FLUX.1-dev at 1024²


def activations(rows: int, dim: int, g: torch.Generator) -> torch.Tensor:
    scale = torch.exp(torch.randn(dim, generator=g) * 1.2)  # per-channel magnitude, ~3 decades
    return (torch.randn(rows, dim, generator=g) * scale).to(torch.bfloat16)


def make_data(samples: int, k_img: int, k_txt: int) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Per store, per array: one tensor per captured sample (what a hook appends)."""
    g = torch.Generator().manual_seed(0)
    cal = {"block_in_img": [], "residual_img": [], "block_in_txt": [], "residual_txt": []}
    for _ in range(samples):
        for s, k in (("img", k_img), ("txt", k_txt)):
            cal[f"block_in_{s}"].append(activations(k, DIM, g))
            cal[f"residual_{s}"].append(activations(k, DIM, g))
    train = {"latents": [torch.randn(1, N_IMG, C_IN, generator=g).to(torch.bfloat16) for _ in range(samples)]}
    items = {"prompt": [torch.tensor([i]) for i in range(samples)], "seed": [torch.tensor([i]) for i in range(samples)],
             "schedule_step": [torch.tensor([0]) for _ in range(samples)],
             "timestep": [torch.tensor([0.5]) for _ in range(samples)]}
    return {"calibration": {**cal, **items},
            "training": {**train, **items, "guidance": [torch.tensor([3.5]) for _ in range(samples)]}}


def dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def write_store(path: Path, specs, data: dict, samples: int, cap: dict, chunk: int, compression: str, clevel: int) -> float:
    t0 = time.perf_counter()
    w = StoreWriter(path, specs, samples, cap["shard_samples"], chunk, "bfloat16", clevel, check_space=False,
                    compression=compression)
    for i in range(samples):
        for name, parts in data.items():
            w.append(name, parts[i])
    w.close()
    return time.perf_counter() - t0


def np_save(folder: Path, specs, data: dict) -> tuple[float, int]:
    """One np.save per array of the same data, already in its stored dtype (the conversion is free)."""
    spec = {s.name: s for s in specs}
    arrays = {n: np.concatenate([_encode(t, "bfloat16") if spec[n].activation else t.numpy() for t in parts])
              for n, parts in data.items()}
    folder.mkdir()
    t0 = time.perf_counter()
    for n, a in arrays.items():
        np.save(folder / f"{n}.npy", a)
    return time.perf_counter() - t0, sum(a.nbytes for a in arrays.values())


def read_back(path: Path, store: str, samples: int, g: torch.Generator) -> tuple[float, int]:
    r = StoreReader(path)
    t0 = time.perf_counter()
    nbytes = 0
    if store == "calibration":  # solve: every row, in order, in big pieces
        for name in ("block_in_img", "residual_img", "block_in_txt", "residual_txt"):
            for x in r.iter_rows(name, 65536):
                nbytes += x.numel() * 2
    else:  # sandwich: a round's samples, sorted random indices
        idx = np.sort(torch.randperm(samples, generator=g)[: samples // 2].numpy())
        nbytes = r.read_samples("latents", idx).numel() * 2
    return time.perf_counter() - t0, nbytes


def np_load(folder: Path) -> float:
    t0 = time.perf_counter()
    for f in sorted(folder.glob("*.npy")):
        np.load(f)
    return time.perf_counter() - t0


def fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def timed(fn, durable: bool, folder: Path) -> float:
    """Seconds for ``fn()`` (which writes ``folder``), started from a clean page cache (os.sync
    before, untimed) and, when ``durable``, including the fsync of every file it wrote."""
    os.sync()
    t0 = time.perf_counter()
    fn()
    if durable:
        fsync_tree(folder)
    return time.perf_counter() - t0


def measure(store: str, compression: str, clevel: int, args, cap: dict, specs, data, chunk: int, tmp: Path,
            g: torch.Generator) -> dict:
    """Median over rounds (np.save first on even rounds, the store first on odd) of both regimes."""
    out: dict = {}
    for regime, durable in (("cached", False), ("durable", True)):
        shares, w_mbs, r_mbs, np_r = [], [], [], []
        size = nbytes = 0
        for rep in range(args.repeats):
            zdir, ndir = tmp / f"{store}-{rep}.zarr", tmp / f"{store}-{rep}.np"
            arrays = {}

            def write_np() -> None:
                arrays["t"], arrays["n"] = np_save(ndir, specs, data)

            def write_zarr() -> None:
                write_store(zdir, specs, data, args.samples, cap, chunk, compression, clevel)

            if rep % 2 == 0:
                t_np, t_z = timed(write_np, durable, ndir), timed(write_zarr, durable, zdir)
            else:
                t_z, t_np = timed(write_zarr, durable, zdir), timed(write_np, durable, ndir)
            nbytes, size = arrays["n"], dir_bytes(zdir)
            t_r, read_bytes = read_back(zdir, store, args.samples, g)
            np_r.append(nbytes / np_load(ndir) / 1e6)
            shares.append(t_np / t_z)
            w_mbs.append(nbytes / t_z / 1e6)
            r_mbs.append(read_bytes / t_r / 1e6)
            shutil.rmtree(zdir)
            shutil.rmtree(ndir)
        out[regime] = {"write_MB_s": round(statistics.median(w_mbs), 1),
                       "np_save_MB_s": round(statistics.median(w_mbs) / statistics.median(shares), 1),
                       "write_share_of_np_save": round(statistics.median(shares), 3),
                       "share_min_max": [round(min(shares), 3), round(max(shares), 3)]}
        if not durable:
            out["read_MB_s"] = round(statistics.median(r_mbs), 1)
            out["np_load_MB_s"] = round(statistics.median(np_r), 1)
    out["stored_share_of_raw"] = round(size / nbytes, 3)
    out["MB"] = round(nbytes / 1e6, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=512,
                    help="captured samples per store (a FLUX.1-dev step captures 2048 per store)")
    ap.add_argument("--image-tokens", type=int, default=64)
    ap.add_argument("--text-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk-samples", type=int, default=None, help="calibration chunk (default: params.yaml)")
    args = ap.parse_args()
    cap = yaml.safe_load(Path("params.yaml").read_text())["capture"]
    data = make_data(args.samples, args.image_tokens, args.text_tokens)
    specs = {"calibration": calibration_specs(DIM, args.image_tokens, args.text_tokens),
             "training": training_specs(N_IMG, C_IN)}
    chunks = {"calibration": args.chunk_samples or cap["chunk_samples"], "training": 1}
    choices = [("zstd", 1), ("lz4", 1), ("none", 0)]
    result: dict = {"samples": args.samples, "repeats": args.repeats, "shard_samples": cap["shard_samples"],
                    "chunk_samples": chunks, "params_yaml": f"{cap['compression']} level {cap['clevel']}", "stores": {}}
    tmp = Path(tempfile.mkdtemp(prefix="capture-io-", dir="."))
    g = torch.Generator().manual_seed(1)
    try:
        for store in ("calibration", "training"):
            write_store(tmp / f"warm-{store}.zarr", specs[store], data[store], args.samples, cap, chunks[store],
                        "zstd", 1)  # thread pools and imports warm before anything is timed
            result["stores"][store] = {
                (f"{c} {lv}" if c != "none" else "none"): measure(store, c, lv, args, cap, specs[store], data[store],
                                                                  chunks[store], tmp, g)
                for c, lv in choices}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report("capture_io", result)


if __name__ == "__main__":
    main()
