"""Will the run fit? Stage validate's check of disk and device memory, before any stage works.

Disk: the disk holding ``data/`` must take every capture@k's activation stores twice (DVC's cache
copy; what ``data/capture`` holds now is replaced, so it counts as free). Device memory, on a CUDA
device with ``model.offload: auto``: every stage must fit ``model.gpu_memory_gb`` resident or
offloaded, as the memory estimator (``python -m fastflux_core.budget``) measures it on fake tensors —
asked in its own process (:func:`fastflux_core.placement.ask_estimator`), so that the estimator is
a tool beside the pipeline and never one of its stages' code deps. One line names what does not fit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fastflux_core.errors import ParamsError
from fastflux_core.layouts import config_blocks
from fastflux_core.params import Params
from fastflux_core.placement import ask_estimator, resolve_device
from fastflux_core.preflight import prompt_counts
from fastflux_core.shapes import Shapes, capture_bytes, transformer_config
from fastflux_core.store import StoreError


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_blocks(params: Params) -> None:
    """``importance.blocks`` names the model's blocks, 0..N-1 (the schema checks that it is a range;
    only the model's config says N): a missing block would stop ablate@i after the reference images
    of both sets were generated. N is read from the config through the family's layout (no model built)."""
    n = len(config_blocks(transformer_config(params), f"transformer config of model.source {params.model.source}"))
    listed = len(params.importance.blocks)
    if listed != n:
        raise ParamsError(f"importance.blocks lists {listed} blocks (0..{listed - 1}) but the model has {n}: "
                          f"list every block index 0..{n - 1}")


def check_resources(params: Params, data: Path = Path("data"), assumed: dict[str, int] | None = None) -> None:
    """Stop with one line when the activation stores do not fit the disk under ``data``, or (CUDA,
    ``model.offload: auto``) a stage does not fit the device (measured: ~1 min at FLUX.1-dev scale).
    ``assumed``: prompt counts of sets whose file is not written yet. First, that the model has the
    blocks ``importance.blocks`` names (:func:`check_blocks`)."""
    check_blocks(params)
    counts = prompt_counts(params.prompts, assumed or {})  # validate: the prompt files exist (preflight)
    items = {k: counts[k] * getattr(params.prompts, k).images_per_prompt for k in counts}
    need = 2 * len(params.steps) * capture_bytes(params.capture, params.sampling, Shapes.of(params), items)
    data.mkdir(parents=True, exist_ok=True)
    held = sum(f.stat().st_size for f in (data / "capture").rglob("*") if f.is_file()) if (data / "capture").is_dir() else 0
    free = shutil.disk_usage(data).free + held
    if need > free:
        raise StoreError(f"the chain's activation stores need about {_size(need)} under {data}/ (capture@1.."
                         f"{len(params.steps)}, with DVC's cache copy), {_size(free)} is free: lower "
                         f"capture.timesteps, capture.image_tokens or the calibration/training images, or free disk")
    if resolve_device(params.model.device).type != "cuda" or params.model.offload != "auto":
        return
    ask_estimator(params, "--check", "--prompts", ",".join(f"{k}={v}" for k, v in counts.items()))
