"""Where a transformer's weights live while a stage runs: all on the device, or block by block.

FLUX.1-dev in bf16 is 22.2 GiB of weights; one 1024² forward peaks at 22.6 GiB — more than a 24 GB
card leaves after the CUDA context. Models are therefore loaded on the host, and each stage places
what it runs:

  resident   ``module.to(device)``: fastest, when weights and the stage's activations fit.
  offloaded  diffusers' ``apply_group_offloading`` at block level, one block per group (with a CUDA
             stream that prefetches the next block while one computes): only the modules outside the
             blocks and about two blocks are on the device at a time.

``model.offload: auto`` takes *resident* when the stage's peak, measured by :mod:`fastflux_core.budget`
on fake tensors at the configured shapes, fits ``model.gpu_memory_gb``, else *offloaded* if that
fits, else stops before any work with one line saying what does not fit (:func:`choose`). ``never`` and
``always`` force one; ``always`` on a CPU runs diffusers' hooks with the CPU as both homes, which is
how the tests run the offloaded code path without a GPU. On a CPU device ``auto`` is resident: there
is no separate device memory to save.

Sandwich training places blocks one by one (:func:`place_blocks`): the blocks it trains stay on
the device (their optimizer state lives there), the blocks before them — run only to recompute
boundary states — are offloaded, the blocks after them are never run and stay on the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from fastflux_core.errors import FastFluxError

Placement = Literal["resident", "offloaded"]


class DeviceMemoryError(FastFluxError):
    """The configured run does not fit the device memory budget."""


def _stream_prefetch(device: torch.device, prefetch: bool | None) -> bool:
    """Prefetch the next block on a CUDA stream (CUDA only). The budget's fake runs have no streams:
    they pass False and count the one prefetched block themselves."""
    return device.type == "cuda" if prefetch is None else prefetch


def place(model: nn.Module, device: torch.device, placement: Placement, prefetch: bool | None = None) -> nn.Module:
    """Put ``model`` (on the host) on ``device`` whole, or offload its blocks with diffusers' hooks;
    the model's own ``forward`` then onloads each block before it runs."""
    if placement == "resident":
        return model.to(device)
    if getattr(model, "_fastflux_offloaded", False):  # hooks already on: they move blocks per call
        return model
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(model, onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1,
                           use_stream=_stream_prefetch(device, prefetch))
    model._fastflux_offloaded = True
    return model


@contextmanager
def placed(model: nn.Module, device: torch.device, placement: Placement) -> Iterator[nn.Module]:
    """``model`` placed on the device inside the block and back on the host after it, so that a stage
    comparing two models (evaluate: base and pruned) never holds both on the device."""
    place(model, device, placement)
    try:
        yield model
    finally:
        if placement == "resident":
            model.to("cpu")


class _Blocks(nn.Module):
    """A container whose only children are the blocks to offload, so diffusers' block-level group
    offloading finds exactly those (and no stray modules of the model)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


def place_blocks(model: nn.Module, blocks: list[nn.Module], resident: list[nn.Module], device: torch.device,
                 offload: bool, prefetch: bool | None = None) -> None:
    """Place a model that is run block by block (an adapter's ``run``, not
    its ``forward``): every module of ``model`` outside its block lists goes to ``device``, the
    ``resident`` blocks too; ``blocks`` (those run but not trained) go to the device, or with
    ``offload`` get diffusers' group-offloading hooks and move in only while each one runs."""
    from fastflux_core.adapter import adapter_for

    block_lists = {ref.path.rsplit(".", 1)[0] for ref in adapter_for(model).blocks}  # FLUX: two, SD3: one
    for name, child in model.named_children():
        if name not in block_lists:
            child.to(device)
    for block in resident:
        block.to(device)
    if not offload or not blocks:
        for block in blocks:
            block.to(device)
        return
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(_Blocks(blocks), onload_device=device, offload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1,
                           use_stream=_stream_prefetch(device, prefetch))


def choose(stage: str, params, device: torch.device) -> Placement:
    """The placement for ``stage`` under ``model.offload`` and ``model.gpu_memory_gb`` (see module doc).
    Raises :class:`DeviceMemoryError` when even the offloaded run does not fit."""
    mode = params.model.offload
    if mode == "never":
        return "resident"
    if mode == "always":
        return "offloaded"
    if device.type != "cuda":
        return "resident"
    from fastflux_core.budget import OverLimit, stage_peak, stop_above

    limit = params.model.gpu_memory_gb * 2**30
    try:
        with stop_above(limit):  # resident stops measuring as soon as it is over the budget
            if stage_peak(stage, params, "resident") <= limit:
                return "resident"
    except OverLimit:
        pass
    peak = stage_peak(stage, params, "offloaded")
    if peak <= limit:
        return "offloaded"
    raise DeviceMemoryError(
        f"stage {stage} needs {peak / 2**30:.1f} GiB of device memory even with its blocks offloaded "
        f"(more resident), model.gpu_memory_gb is {params.model.gpu_memory_gb:g}: "
        f"lower sampling.batch_size / sandwich.micro_batch / text.batch_size, or run "
        f"'python -m fastflux_core.budget' to see every stage")
