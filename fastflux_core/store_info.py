"""What is in an activation store (``fastflux inspect``): layout, size on disk and value statistics.

The store is opened through :class:`~fastflux_core.store.StoreReader`, so an incomplete or damaged
store is refused with the same one-line error a stage gives. Statistics stream each array shard by
shard (float64 accumulators), so a FLUX.1-dev store of hundreds of GB is read once with bounded
memory; bfloat16 stores are decoded from their uint16 bits first.

>>> import tempfile, torch, pathlib
>>> from fastflux_core.store import ArraySpec, StoreWriter
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.zarr"
>>> w = StoreWriter(path, [ArraySpec("x", (2,), ("sample", "dim"))], n_samples=2, shard_samples=2,
...                 chunk_samples=1, dtype="float32")
>>> w.append("x", torch.tensor([[1.0, 2.0]])); w.append("x", torch.tensor([[3.0, 4.0]])); w.close()
>>> info = describe(path, progress=False)
>>> info["arrays"]["x"]["mean"], info["arrays"]["x"]["max"], info["arrays"]["x"]["nan"]
(2.5, 4.0, 0)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastflux_core.errors import FastFluxError
from fastflux_core.store import StoreReader, manifest

_ROWS_PER_READ = 1 << 16


def _stats(reader: StoreReader, name: str, bar: tqdm) -> dict:
    n = nan = 0
    total = total_sq = 0.0
    lo, hi = math.inf, -math.inf
    for rows in reader.iter_rows(name, _ROWS_PER_READ):
        x = rows.double().flatten()
        finite = x[~torch.isnan(x)]
        nan += int(x.numel() - finite.numel())
        n += finite.numel()
        total += float(finite.sum())
        total_sq += float(finite.square().sum())
        if finite.numel():
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        bar.update(rows.shape[0])
    mean = total / n if n else math.nan
    std = math.sqrt(max(total_sq / n - mean * mean, 0.0)) if n else math.nan
    return {"mean": mean, "std": std, "min": lo if n else math.nan, "max": hi if n else math.nan, "nan": nan}


def describe(path: str | Path, sample: int = 0, progress: bool = True) -> dict:
    """Every array's dims, shape, dtype, chunk/shard layout, bytes on disk and statistics; the
    group's attributes (what was captured, from which model step); ``sample`` first rows of each."""
    path = Path(path)
    if not path.exists():
        raise FastFluxError(f"no activation store at {path}")
    reader = StoreReader(path)
    sizes = manifest(path)["sizes"]  # every file of the store → bytes
    arrays = {}
    names = sorted(reader.group.array_keys())
    total_rows = sum(reader.array(n).shape[0] if reader.array(n).ndim else 1 for n in names)
    with tqdm(total=total_rows, desc=f"inspect {path.name}", unit="row", disable=not progress) as bar:
        for name in names:
            arr = reader.array(name)
            info = {
                "dims": list(arr.metadata.dimension_names or ()), "shape": list(arr.shape), "dtype": str(arr.dtype),
                "stored_as": arr.attrs.get("stored_as", str(arr.dtype)), "chunks": list(arr.chunks),
                "shards": list(arr.shards) if arr.shards else None,
                "compressors": [type(c).__name__ for c in arr.compressors],
                "bytes_on_disk": sum(b for rel, b in sizes.items() if rel.startswith(name + "/")),
            }
            info.update(_stats(reader, name, bar))
            if sample:
                info["sample"] = reader.read(name, 0, sample).tolist()
            arrays[name] = info
    attrs = {k: v for k, v in reader.attrs.items() if k != "prompts"}
    attrs["n_prompts"] = len(reader.attrs.get("prompts", []))
    return {"path": str(path), "complete": reader.attrs.get("complete") is True, "bytes_on_disk": sum(sizes.values()),
            "attrs": attrs, "arrays": arrays}


def format_info(info: dict) -> str:
    """A plain-text table of :func:`describe`'s result."""
    lines = [f"{info['path']}: complete={info['complete']}, {info['bytes_on_disk'] / 2**20:.1f} MiB on disk",
             "  " + ", ".join(f"{k}={v}" for k, v in info["attrs"].items() if k not in ("description",)), ""]
    head = f"{'array':16} {'dims':22} {'shape':16} {'stored as':9} {'chunk/shard':22} {'MiB':>8} " \
           f"{'mean':>10} {'std':>10} {'min':>10} {'max':>10} {'NaN':>5}"
    lines.append(head)
    for name, a in info["arrays"].items():
        layout = f"{a['chunks'][0]}/{a['shards'][0] if a['shards'] else '-'} rows"
        lines.append(f"{name:16} {','.join(a['dims']):22} {'×'.join(map(str, a['shape'])):16} {a['stored_as']:9} "
                     f"{layout:22} {a['bytes_on_disk'] / 2**20:8.2f} {a['mean']:10.4g} {a['std']:10.4g} "
                     f"{a['min']:10.4g} {a['max']:10.4g} {a['nan']:5d}")
        if "sample" in a:
            for row in a["sample"]:  # a sample of a (sample, token, channel) array is itself 2-D
                values = torch.tensor(row, dtype=torch.float64).flatten().tolist()
                lines.append("    " + " ".join(f"{v:.4g}" for v in values[:8]) + (" …" if len(values) > 8 else ""))
    return "\n".join(lines)


def stores_in(path: str | Path) -> list[Path]:
    """``path`` itself when it is a store (or nothing at all: :func:`describe` says so); the stores
    inside it when it is a folder holding some (``data/capture/1``: calibration.zarr, training.zarr)."""
    path = Path(path)
    if path.is_dir() and not (path / "zarr.json").is_file():
        inside = sorted(p for p in path.iterdir() if p.is_dir() and (p / "zarr.json").is_file())
        if inside:
            return inside
    return [path]
