"""Atomic outputs, JSON, CSV, safetensors and PNG helpers, and the stage-timing files.

DVC caches whatever a stage leaves at its output paths, so a stage that dies half-way must leave
nothing there. Every output is built in a temporary folder and renamed into place only when complete
(a rename within one filesystem is atomic). Temporaries live under ``.fastflux-tmp/<stage>/`` at the
repository root — never inside an output or input folder, where a killed stage's leftovers would
change a downstream hash — and the next run of the same stage removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fastflux_core.errors import damaged, require_finite, require_finite_json, tensors_digest

TMP_ROOT = Path(".fastflux-tmp")  # git- and dvc-ignored, at the repository root (the cwd of every stage)
META_KEY = "fastflux"  # safetensors metadata: {"sha256": digest of the tensors, "meta": {...}}


class Ranks(Protocol):
    """What :func:`atomic_dir` needs of a process group (:class:`fastflux_core.stage.World`)."""

    size: int

    @property
    def is_main(self) -> bool: ...
    def barrier(self) -> None: ...


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _tmp_parent(path: Path) -> Path:
    """Where the temporary for ``path`` is built: under ``.fastflux-tmp/<stage>/`` of the DVC
    repository holding ``path`` when that is on the same filesystem (so the final rename is atomic);
    else — a data folder mounted from another disk, or no repository — hidden beside ``path``
    (``.dvcignore`` hides ``.*.tmp-*`` from DVC's hashes)."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    repo = next((r for r in path.parents if (r / "dvc.yaml").is_file()), None)
    if repo is not None:
        tmp = repo / TMP_ROOT / stage_name()
        tmp.mkdir(parents=True, exist_ok=True)
        if os.stat(tmp).st_dev == os.stat(path.parent).st_dev:
            return tmp
    return path.parent


def clean_tmp(stage: str | None = None) -> None:
    """Remove what a killed earlier run of this stage left under TMP_ROOT."""
    shutil.rmtree(TMP_ROOT / (stage or stage_name()), ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, world: Ranks | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``path`` only if the block succeeds.

    With a ``world`` of several ranks every rank gets the same directory (a fixed name, made by rank 0
    before any rank writes) and rank 0 renames it into place once every rank has finished its part. A
    rank that fails leaves it under the stage's temporaries; the launcher stops the other ranks, and
    the stage's next run removes it (:func:`fastflux_core.stage.run_stage`).

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_dir(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("done")
    >>> (root / "out" / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    if world is not None and world.size > 1:
        tmp = _tmp_parent(path) / f".{path.name}.tmp-shared"
        if world.is_main:
            _remove(tmp)
            tmp.mkdir()
        world.barrier()
        yield tmp
        world.barrier()
        if world.is_main:
            _remove(path)
            os.replace(tmp, path)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=_tmp_parent(path)))
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
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=_tmp_parent(path))
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (and writers that recreate the file) make 0600
    os.replace(tmp, path)


def write_json(path: str | Path, obj: object) -> None:
    """Write JSON atomically, sorted and indented so DVC diffs stay readable; NaN/inf refused."""
    require_finite_json(obj, str(path))
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, columns: list[str], rows: list[dict]) -> None:
    """Write rows as CSV atomically (numbers with 6 significant digits, for DVC plots)."""
    def cell(v: object) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    require_finite_json(rows, str(path))
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join([",".join(columns)] + [",".join(cell(r[c]) for c in columns) for r in rows]) + "\n")


def read_json(path: str | Path) -> object:
    """A JSON file a stage reads; missing or unparsable → one line naming the stage to re-run."""
    path = Path(path)
    if not path.is_file():
        raise damaged(path, "missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise damaged(path, f"not JSON: {err}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors (never pickle), atomically, with a digest of the payload.

    All metadata goes under one key as sorted JSON: safetensors writes its metadata map in a random
    order per process when it has several keys, which would make the file's bytes (and DVC's hash)
    differ run to run. Non-finite values are refused: a NaN weight is a failed computation."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    for k, v in tensors.items():
        require_finite(v, f"tensor {k!r} to be written to {path}")
    meta = json.dumps({"sha256": tensors_digest(tensors), "meta": metadata or {}}, sort_keys=True)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: meta})


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, verified: readable, digest matching (when the file
    has one, as every file FastFLUX writes does) and finite. Otherwise one line naming the stage to
    re-run."""
    path = Path(path)
    if not path.is_file():
        raise damaged(path, "missing")
    try:
        with safe_open(str(path), framework="pt") as f:  # one open: metadata and every tensor
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        ours = json.loads(raw) if raw is not None else {"sha256": None, "meta": {}}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise damaged(path, f"unreadable safetensors: {str(err).splitlines()[0][:200]}") from None
    if ours["sha256"] is not None and tensors_digest(tensors) != ours["sha256"]:
        raise damaged(path, "checksum mismatch")
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise damaged(path, f"tensor {k!r} holds NaN/inf")
    return tensors, ours["meta"]


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, verified (see :func:`read_tensors`)."""
    return read_tensors(path)[0]


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
