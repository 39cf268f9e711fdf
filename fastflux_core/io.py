"""Atomic outputs, JSON, safetensors and PNG helpers.

DVC caches whatever a stage leaves at its output paths, so a stage that dies half-way must leave
nothing there. Every output is built under a temporary name beside its final path and renamed into
place only when complete (a rename within one filesystem is atomic).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fastflux_core.errors import FastFluxError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``path`` only if the block succeeds.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_dir(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("done")
    >>> (root / "out" / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs get ordinary permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove(path)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically, sorted and indented so DVC diffs stay readable."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, columns: list[str], rows: list[dict]) -> None:
    """Write rows as CSV atomically (numbers with 6 significant digits, for DVC plots)."""
    def cell(v: object) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    with atomic_file(path) as tmp:
        tmp.write_text("\n".join([",".join(columns)] + [",".join(cell(r[c]) for c in columns) for r in rows]) + "\n")


def read_json(path: str | Path) -> object:
    return json.loads(Path(path).read_text())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (never pickle), atomically."""
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FastFluxError(f"missing tensor file: {path}")
    return load_file(str(path))


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Save a uint8 image, (H, W) or (H, W, 3), as PNG."""
    Image.fromarray(image).save(path, format="PNG")


def image_grid(images: np.ndarray, cols: int, scale: int = 1) -> np.ndarray:
    """Tile (N, H, W[, C]) uint8 images into one grid image, nearest-neighbour upscaled by ``scale``."""
    n, h, w = images.shape[:3]
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, *images.shape[3:]), dtype=images.dtype)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


TIMING = Path("data/timing")


def stage_name() -> str:
    """The DVC stage this process runs, from its script and first argument (``capture@3``)."""
    name = Path(sys.argv[0]).stem
    return f"{name}@{sys.argv[1]}" if len(sys.argv) > 1 else name


def write_timing(record: dict, name: str | None = None) -> None:
    """Timings (wall seconds, latencies) go to ``data/timing/<stage>.json``, never into a DVC output:
    they differ run to run, and an output's hash must depend on its inputs alone."""
    write_json(TIMING / f"{name or stage_name()}.json", record)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main`` deterministically and time it. A :class:`FastFluxError` becomes one line
    on stderr and exit code 2; the wall time goes to ``data/timing/<stage>_wall.json``."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.perf_counter()
    try:
        main()
    except FastFluxError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    write_timing({"seconds": round(time.perf_counter() - t0, 2)}, f"{stage_name()}_wall")
