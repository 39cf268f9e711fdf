"""A CUDA device that is not there: fake tensors that allocate what real ones would, and their peak.

The memory estimator (:mod:`fastflux_core.stage_peaks`, for :mod:`fastflux_core.budget`) runs each stage's own device code on
``torch._subclasses.fake_tensor.FakeTensorMode`` tensors — shapes, dtypes and devices, no data, no GPU
— inside :func:`fake_device`, and :func:`tracked` records the peak bytes on the device (torch's
``MemTracker``, lightened: :func:`_tracker`). :func:`stop_above` ends a measurement as soon as it
passes a limit.

Fake tensors differ from real ones in five places, patched only inside :func:`fake_device`:
``Module.to`` swaps fake parameters (which fails) — it moves them with ``.data =`` as for real
tensors; ``.data =`` does not update a fake tensor's device — it does here; attention picks no
kernel without a GPU — it takes the flash (half precision) or memory-efficient (float32) kernel a
GPU takes, whose fake kernels allocate what the real ones do; and a fake value has no truth, so
capture's finiteness check runs its device half only, and Qwen-Image's text mask, read from which
states are zero (:func:`fastflux_core.qwenimage.text_mask`), is taken as absent — every token
attended; a padded batch runs the memory-efficient kernel with a (B, N) mask instead, the same memory
but for the mask's bytes.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from fastflux_core import capture as capture_module
from fastflux_core import qwenimage as qwenimage_module

GiB = 2**30
# torch.utils.benchmark (fastflux_core.speed) imports torch's C++ extension builder, which logs "No CUDA
# runtime is found" on a machine without a GPU — the machine the estimator is for. Before that import.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@contextmanager
def fake_device() -> Iterator[None]:
    """FakeTensorMode in which fake tensors move between devices like real ones (see module doc)."""
    data = torch._C.TensorBase.data

    def set_data(self, new):
        data.__set__(self, new)
        if isinstance(new, FakeTensor):
            self.fake_device = new.fake_device

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        for t in itertools.chain(self.parameters(), self.buffers()):
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            t.data = t.data.to(device=device if device is not None else t.device, dtype=cast)
        return self

    real_to, real_sdpa = nn.Module.to, F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if isinstance(query, FakeTensor) and query.device.type == "cuda" and attn_mask is None:
            if query.dtype in (torch.float16, torch.bfloat16):
                return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                          scale=scale)[0]
            return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, False, dropout_p,
                                                                          is_causal, scale=scale)[0]
        return real_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa)

    def check_finite(t, *args) -> None:  # the device half of capture's check: a fake value has no truth
        torch.isfinite(t).all()

    def no_text_mask(states) -> None:  # which states are zero: a fake value has no truth
        return None

    real_check, real_mask = capture_module._check_finite, qwenimage_module.text_mask
    FakeTensor.data = property(data.__get__, set_data)
    nn.Module.to, F.scaled_dot_product_attention, capture_module._check_finite = to, sdpa, check_finite
    qwenimage_module.text_mask = no_text_mask
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), warnings.catch_warnings():
            quiet()
            yield
    finally:
        del FakeTensor.data
        nn.Module.to, F.scaled_dot_product_attention, capture_module._check_finite = real_to, real_sdpa, real_check
        qwenimage_module.text_mask = real_mask


def quiet() -> None:
    """Silence what torch says about our own use of its tools, inside a measurement: a fake tensor's
    data pointer (torch's own ``Tensor.__deepcopy__`` asks for it), and MemTracker's backward hooks
    on modules it no longer tracks. A user reading the budget table should see the table."""
    warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor is deprecated")
    warnings.filterwarnings("ignore", message="Module is None. Skipping")


def space(real: str | None) -> tuple[AbstractContextManager, torch.device]:
    """Where a measurement runs: fake tensors on a fake CUDA device (``real`` None: the budget), or real
    tensors on the device type ``real`` names — the same code, to check the budget against a real run
    (``"cpu"``: ``benchmarks/flux_width_memory.py``; ``"cuda"``: ``benchmarks/gpu_check.py``)."""
    return (nullcontext(), torch.device(real)) if real else (fake_device(), CUDA)


def training_space(real: str | None) -> tuple[AbstractContextManager, torch.device]:
    """Where a training step is measured: fake tensors on the CPU for the budget (a backward on the fake
    CUDA device needs a real one; only the step's own modules exist there, so the CPU peak is what the
    device would hold), else real tensors on ``real``."""
    return (nullcontext(), torch.device(real)) if real else (fake_device(), CPU)


class OverLimit(Exception):
    """A measurement under :func:`stop_above` passed its limit: that placement does not fit."""


_STOP_ABOVE: list[int | None] = [None]  # bytes on the measured device; set by stop_above


@contextmanager
def stop_above(limit: int) -> Iterator[None]:
    """Measurements inside raise :class:`OverLimit` as soon as the measured device holds more than
    ``limit`` bytes. Choosing a placement only asks "does resident fit?": a resident FLUX.1-dev stops
    at its first operation (22.2 GiB of weights are already there) instead of running a whole fake
    forward and backward to say no."""
    _STOP_ABOVE[0] = limit
    try:
        yield
    finally:
        _STOP_ABOVE[0] = None


def _tracker(device: str):
    """torch's MemTracker with three changes: no gradient hooks on frozen parameters (which cannot take
    one); only the global peak is kept — MemTracker also keeps every module's own peak, walking
    all tracked modules at each allocation, which takes FLUX.1-dev's forward from 1.4 s to 20 s; and
    under :func:`stop_above` it stops once ``device`` (the device type measured) passes the limit."""
    limit = _STOP_ABOVE[0]

    class Tracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            frozen = any(not p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and not frozen)

        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)
                    if limit is not None and str(dev).split(":")[0] == device and snap["Total"] > limit:
                        raise OverLimit(f"{snap['Total'] / GiB:.2f} GiB on {device} > {limit / GiB:.2f} GiB")

    return Tracker()


@contextmanager
def tracked(*modules: nn.Module, device: str) -> Iterator[dict]:
    """Track device memory while the block runs; ``out["peak"]`` = {device type: peak bytes}.
    ``device``: the device type measured (what :func:`stop_above` watches)."""
    mt = _tracker(device)
    if modules:
        mt.track_external(*modules)
    out: dict = {}
    with mt, warnings.catch_warnings():
        quiet()
        yield out
    out["peak"] = {str(dev).split(":")[0]: int(kinds["Total"]) for dev, kinds in mt.get_tracker_snapshot("peak").items()}


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
