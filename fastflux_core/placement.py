"""The device a run uses (``model.device``), and where a transformer's weights live on it while a
stage runs: all on the device, or block by block.

:func:`resolve_device` turns ``model.device`` into a ``torch.device`` (``auto``: CUDA when there is
one; under a launcher, this process's own GPU) and :func:`check_device` refuses one that does not
exist — the one way the process group (:mod:`fastflux_core.stage`), the checks of a run
(:mod:`fastflux_core.preflight`) and the loaders (:mod:`fastflux_core.source`) resolve a device.

FLUX.1-dev in bf16 is 22.2 GiB of weights; one 1024² forward peaks at 22.6 GiB — more than a 24 GB
card leaves after the CUDA context. Models are therefore loaded on the host, and each stage places
what it runs:

  resident   ``module.to(device)``: fastest, when weights and the stage's activations fit.
  offloaded  diffusers' ``apply_group_offloading`` at block level, one block per group (with a CUDA
             stream that prefetches the next block while one computes): only the modules outside the
             blocks and about two blocks are on the device at a time.

``model.offload: auto`` takes *resident* when the stage's peak — measured on fake tensors at the
configured shapes by the estimator, ``python -m fastflux_core.budget`` (its measurements are in
:mod:`fastflux_core.stage_peaks`; it runs in its own process: :func:`ask_estimator` says why) —
fits ``model.gpu_memory_gb``, else *offloaded* if that fits, else stops before any work with one
line saying what does not fit (:func:`choose`). ``never`` and ``always`` force one; ``always`` on a CPU runs diffusers' hooks with the CPU as both homes, which is
how the tests run the offloaded code path without a GPU. On a CPU device ``auto`` is resident: there
is no separate device memory to save.

Sandwich training places blocks one by one (:func:`place_blocks`): the blocks it trains stay on
the device (their optimizer state lives there), the blocks before them — run only to recompute
boundary states — are offloaded, the blocks after them are never run and stay on the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
import yaml
from torch import nn

from fastflux_core.blocks import BlockAdapter
from fastflux_core.errors import FastFluxError

Placement = Literal["resident", "offloaded"]


DOES_NOT_FIT = 3  # the estimator's exit status for a DeviceMemoryError (2: any other cause a user can fix)


class DeviceMemoryError(FastFluxError):
    """The configured run does not fit the device memory budget."""

    exit_status = DOES_NOT_FIT


def check_device(name: str) -> None:
    """A CUDA or MPS device asked for must exist (``auto`` takes CUDA when there is one)."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FastFluxError(f"model.device is {name!r} but torch sees no CUDA device: use model.device: auto or cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise FastFluxError(f"model.device is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise FastFluxError("model.device is 'mps' but this torch has no MPS device: use model.device: auto or cpu")


def resolve_device(name: str) -> "torch.device":
    """The ``torch.device`` that ``model.device`` names (``auto``: CUDA when there is one, else the
    CPU). Under a launcher (``LOCAL_RANK`` set), ``auto`` and ``cuda`` mean this process's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


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


def place_blocks(adapter: BlockAdapter, blocks: list[nn.Module], resident: list[nn.Module], device: torch.device,
                 offload: bool, prefetch: bool | None = None) -> None:
    """Place a model that is run block by block (an adapter's ``run``, not its ``forward``): every
    module of ``adapter.model`` outside its block lists goes to ``device``, the ``resident`` blocks
    too; ``blocks`` (those run but not trained) go to the device, or with ``offload`` get diffusers'
    group-offloading hooks and move in only while each one runs."""
    block_lists = {ref.path.rsplit(".", 1)[0] for ref in adapter.blocks}  # FLUX: two, SD3: one
    for name, child in adapter.model.named_children():
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
    return ask_estimator(params, "--choose", stage).strip().splitlines()[-1]


def ask_estimator(params, *args: str) -> str:
    """Run the memory estimator, ``python -m fastflux_core.budget --params <params> *args``, in its own
    process and return what it prints. Its one-line refusals come back as the same line: "does not
    fit" (exit status :data:`DOES_NOT_FIT`) as :class:`DeviceMemoryError`, any other cause a user can
    fix (exit status 2) as :class:`FastFluxError`.

    Why a process and not an import: resident and offloaded give the same bytes (tests/test_placement.py),
    so which one a stage takes changes no output — the estimator decides *how* a stage runs, never
    *what* it writes. Imported, it would be one of every stage's code deps (DVC re-runs a stage when
    any of them changes), and it imports nearly every module: editing how memory is estimated would
    invalidate every cached stage — on FLUX.1-dev ~30 GPU-hours for no changed byte."""
    with tempfile.TemporaryDirectory(prefix="fastflux-estimate-") as folder:
        file = Path(folder) / "params.yaml"
        file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "fastflux_core.budget", "--params", str(file), *args],
                              capture_output=True, text=True)
    if done.returncode in (2, DOES_NOT_FIT):
        # "error: <cause>" (run_command), or argparse's "<prog>: error: <cause>": the cause alone
        line = done.stderr.strip().splitlines()[-1]
        line = line.partition("error: ")[2] or line
        raise (DeviceMemoryError if done.returncode == DOES_NOT_FIT else FastFluxError)(line)
    if done.returncode:
        raise RuntimeError(f"the memory estimator (python -m fastflux_core.budget {' '.join(args)}) failed with "
                           f"exit status {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout
