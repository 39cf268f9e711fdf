"""Errors a user can act on, and the integrity checks of what a stage reads that raise them.

A :class:`FastFluxError` is a problem with the user's input or environment, not a bug in FastFLUX:
stage scripts print it as one line and exit non-zero (:func:`fastflux_core.stage.run_stage`).

DVC caches whatever a stage writes. A stage that computes on a damaged input (a flipped byte in an
activation shard, a truncated safetensors file) or on NaN produces a wrong result that DVC then
serves for ever. So every stage checks what it reads and what it is about to write, and stops with
one line that names the file or tensor and the stage that must re-run.

>>> producer("data/capture/3/training.zarr/x/c/0/0")
'capture@3'
>>> producer("data/reference/importance/latents.safetensors"), producer("elsewhere/w.safetensors")
('reference@importance', None)
>>> require_finite(torch.tensor([1.0, float("nan")]), "loss at step 7")
Traceback (most recent call last):
...
fastflux_core.errors.NonFiniteError: loss at step 7 is not finite (1 NaN, 0 inf of 2 values)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch


class FastFluxError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in FastFLUX."""

    exit_status = 2  # what a command exits with (fastflux_core.cli.run_command); a subclass may have its own


class ParamsError(FastFluxError):
    """params.yaml is missing, malformed, has an unknown key or a value out of range."""


class ModelFolderError(FastFluxError):
    """A model folder is missing or is not in the layout FastFLUX expects."""


# Output folder → the stage that writes it (dvc.yaml's names; foreach members as name@key).
_PRODUCERS = [
    (r"data/encoded(/|$)", "encode"),
    (r"data/base(/|$)", "base"),
    (r"data/reference/([^/]+)", "reference@{0}"),
    (r"data/ablate/([^/]+)", "ablate@{0}"),
    (r"data/rank(/|$)", "rank"),
    (r"data/plan(/|$)", "plan"),
    (r"data/endpoints(/|$)", "endpoints"),
    (r"data/capture/([^/]+)", "capture@{0}"),
    (r"data/solve/([^/]+)", "solve@{0}"),
    (r"data/state/0(/|$)", "plan"),
    (r"data/state/([^/]+)", "sandwich@{0}"),
    (r"data/assemble(/|$)", "assemble"),
    (r"data/export(/|$)", "export"),
]


class DamagedInputError(FastFluxError):
    """A file a stage reads is missing, truncated or fails its checksum."""


class NonFiniteError(FastFluxError):
    """NaN or inf in an input, a loss, a solution or trained weights."""


def producer(path: str | Path) -> str | None:
    """The pipeline stage whose output holds ``path`` (None outside the pipeline's data folders)."""
    text = Path(path).as_posix()
    for pattern, stage in _PRODUCERS:
        m = re.search(pattern, text)
        if m:
            return stage.format(*m.groups())
    return None


def damaged(path: str | Path, why: str) -> DamagedInputError:
    """The one-line error for a damaged input: what is wrong and what to re-run."""
    stage = producer(path)
    fix = f"re-run stage {stage} (dvc repro -f -s {stage})" if stage else "replace the file"
    return DamagedInputError(f"{path} is damaged ({why}): {fix}")


def require_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` unchanged if every value is finite, else :class:`NonFiniteError` naming ``what``."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        nan = int(torch.isnan(t).sum())
        inf = int(torch.isinf(t).sum())
        raise NonFiniteError(f"{what} is not finite ({nan} NaN, {inf} inf of {t.numel()} values)")
    return t


def require_finite_json(obj: object, where: str, key: str = "") -> None:
    """Refuse NaN/inf anywhere in a JSON-bound object (JSON has no such numbers; Python writes
    ``NaN``, which other readers reject and which hides a failed computation)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise NonFiniteError(f"{where}: {key or 'value'} is {obj} (a NaN/inf result is never written)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            require_finite_json(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            require_finite_json(v, where, f"{key}[{i}]")


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order: stored in a safetensors file's
    metadata so that flipped payload bytes (which safetensors itself does not notice) are caught."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def loading(path: str | Path) -> Iterator[None]:
    """Around a library load (diffusers/transformers ``from_pretrained``): a truncated or garbage file
    becomes one line naming the folder and the stage to re-run, not a traceback from deep inside."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError, KeyError) as err:
        raise damaged(path, f"cannot be loaded: {' '.join(str(err).split())[:300]}") from None
