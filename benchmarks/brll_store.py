"""BRLL benchmark: streamed Gram accumulation and the activation store.

Measures, in one run:
  - Gram accumulation rate (rows/s through GramAccumulator.add) as a fraction of a same-size
    float64 torch.matmul (XᵀX for the same chunk), i.e. the overhead of the bias row and bookkeeping;
  - peak resident memory of the streamed solve over a store at two token counts 8× apart
    (streaming: should be flat);
  - bytes per element on disk and write rate of the sharded Zarr store against np.save of the same data.

Prints JSON and writes benchmarks/results/brll_store.json.
Run: python benchmarks/brll_store.py [--dim 256] [--rows 65536]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import report

from fastflux_core.lstsq import GramAccumulator
from fastflux_core.store import ArraySpec, StoreReader, StoreWriter


def gram_rate(dim: int, rows: int, chunk: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=g)
    r = torch.randn(rows, dim, generator=g)
    acc = GramAccumulator(dim, dim)
    acc.add(x[:chunk], r[:chunk])  # warm-up
    t0 = time.perf_counter()
    for s in range(0, rows, chunk):
        acc.add(x[s : s + chunk], r[s : s + chunk])
    t_acc = time.perf_counter() - t0
    # the same work as two plain float64 matmuls per chunk (XᵀX and XᵀR), nothing else
    t0 = time.perf_counter()
    for s in range(0, rows, chunk):
        xd, rd = x[s : s + chunk].double(), r[s : s + chunk].double()
        torch.matmul(xd.T, xd)
        torch.matmul(xd.T, rd)
    t_mm = time.perf_counter() - t0
    return {"rows_per_s": rows / t_acc, "matmul_rows_per_s": rows / t_mm, "fraction_of_matmul": t_mm / t_acc}


def write_store(path: Path, dim: int, samples: int, tokens: int, dtype: str) -> tuple[float, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    data = torch.randn(samples * tokens, dim, generator=g) * 3
    w = StoreWriter(path, [ArraySpec("block_in_img", (dim,), ("token", "dim"), tokens),
                           ArraySpec("residual_img", (dim,), ("token", "dim"), tokens)],
                    samples, shard_samples=32, chunk_samples=8, dtype=dtype)
    t0 = time.perf_counter()
    for s in range(samples):
        rows = data[s * tokens : (s + 1) * tokens]
        w.append("block_in_img", rows)
        w.append("residual_img", rows * 0.5)
    w.close()
    return time.perf_counter() - t0, data.numpy()


def _solve_peak(path: str, dim: int, q: mp.Queue) -> None:
    from fastflux_core.solve import SOURCES  # noqa: F401  (import cost outside the measurement)

    store = StoreReader(Path(path))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    acc = GramAccumulator(dim, dim)
    for x, r in zip(store.iter_rows("block_in_img", 8192), store.iter_rows("residual_img", 8192)):
        acc.add(x, r)
    acc.solve(1e-4)
    q.put((before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def peak_memory(dim: int, samples: int, tokens: int, tmp: Path) -> dict:
    path = tmp / f"peak{samples}x{tokens}.zarr"
    write_store(path, dim, samples, tokens, "float32")
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_solve_peak, args=(str(path), dim, q))
    p.start()
    before, after = q.get()
    p.join()
    shutil.rmtree(path)
    return {"samples": samples, "tokens_per_sample": tokens, "total_tokens": samples * tokens,
            "data_mib": samples * tokens * dim * 8 / 2**20,
            "peak_rss_mib": after / 1024, "rss_growth_mib": (after - before) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--rows", type=int, default=65536)
    args = ap.parse_args()
    out: dict = {"dim": args.dim, "torch_threads": torch.get_num_threads()}
    out["gram"] = gram_rate(args.dim, args.rows, chunk=8192)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # total token count 8× apart, same shard layout: the streamed solve's memory should not grow
        out["peak_memory"] = [peak_memory(args.dim, n, 64, tmp) for n in (256, 2048)]
        disk = {}
        for dtype in ("float32", "bfloat16"):
            seconds, data = write_store(tmp / f"{dtype}.zarr", args.dim, 256, 64, dtype)
            nbytes = sum(f.stat().st_size for f in (tmp / f"{dtype}.zarr").rglob("*") if f.is_file())
            t0 = time.perf_counter()
            np.save(tmp / "raw.npy", data)
            np.save(tmp / "raw2.npy", data * 0.5)
            t_np = time.perf_counter() - t0
            elements = 2 * data.size
            disk[dtype] = {"bytes_per_element": nbytes / elements, "write_mb_per_s": nbytes / seconds / 1e6,
                           "np_save_bytes_per_element": 4.0, "np_save_mb_per_s": 2 * data.nbytes / t_np / 1e6,
                           "write_seconds": seconds, "np_save_seconds": t_np}
        out["store"] = disk
    report("brll_store", out)


if __name__ == "__main__":
    main()
