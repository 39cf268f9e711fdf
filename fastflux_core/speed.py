"""How fast a model is: FLOPs of one forward and its measured latency, counted the same way for the
base and the pruned model.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts matmuls and attention. On the CPU,
``scaled_dot_product_attention`` dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``,
which torch registers no formula for (it would count 0 and a FLOPs ratio would ignore attention —
a quarter of a FLUX.1-dev block at 1024²); this module registers torch's own SDPA formula for it.
:func:`block_flops` is the analytic count of one FLUX block, which the counter is tested against.

Latency: one transformer forward per call, timed in four phases A B B A, each model warmed up at the
start of its phase and on the device only during its phases (two FLUX.1-dev transformers do not fit
one card), so that drift (clock boost, cache state, other load) falls on both alike; median and
interquartile range per model. Each call is timed with torch.utils.benchmark's clock
(``benchmark.utils.timer.timer``, which synchronises the accelerator before reading the time);
``Timer.timeit`` itself is not used because it runs warm-up calls of its own inside each call.

>>> block_flops("double", dim=3072, n_img=4096, n_txt=512) / 1e12  # FLUX.1-dev block at 1024²
1.304822808576
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch.utils.benchmark.utils.timer import timer as clock
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

_aten = torch.ops.aten
_CPU_SDPA = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CPU_SDPA_BACKWARD = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def _register_cpu_attention() -> None:
    from torch.utils.flop_counter import flop_registry

    if _CPU_SDPA is not None and _CPU_SDPA not in flop_registry:
        @register_flop_formula(_CPU_SDPA)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

    if _CPU_SDPA_BACKWARD is not None and _CPU_SDPA_BACKWARD not in flop_registry:
        @register_flop_formula(_CPU_SDPA_BACKWARD)
        def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                               **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_attention()


def block_flops(kind: str, dim: int, n_img: int, n_txt: int, batch: int = 1, mlp_ratio: int = 4) -> int:
    """Analytic forward FLOPs (2 per multiply-add) of one FLUX block, as matmuls and attention.

    Per token, double and single blocks both spend 24·D² (double: q, k, v 3D², out D², MLP 2·4D²,
    each ×2; single: q, k, v, MLP-in and the fused (D + 4D) → D output projection), plus attention
    4·N²·D over the joined sequence N = N_img + N_txt, plus the AdaLN modulation on temb
    (double: two D → 6D, single: one D → 3D)."""
    n = n_img + n_txt
    per_token = 2 * (3 * dim * dim + dim * dim + 2 * mlp_ratio * dim * dim) if kind == "double" else \
        2 * (3 * dim * dim + mlp_ratio * dim * dim + (1 + mlp_ratio) * dim * dim)
    modulation = 2 * (2 * dim * 6 * dim) if kind == "double" else 2 * dim * 3 * dim
    attention = 4 * n * n * dim
    return batch * (n * per_token + modulation + attention)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` as counted by ``FlopCounterMode`` (attention included on every device)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def count_flops_by_module(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """FLOPs of ``fn()`` in total and per module, by the module's name inside the model called
    (``FlopCounterMode`` names them ``<ModelClass>.<name>``; a parent includes its children)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    per_module = {name.split(".", 1)[1]: sum(ops.values()) for name, ops in counter.get_flop_counts().items() if "." in name}
    return counter.get_total_flops(), per_module


def latency_phases(contexts: tuple[Callable[[], AbstractContextManager], Callable[[], AbstractContextManager]],
                   fns: tuple[Callable[[], object], Callable[[], object]], warmup: int, repeats: int) -> list[dict]:
    """Seconds per call of two functions, each run inside its own context (which puts its model on the
    device and takes it off after), in four phases A B B A: each phase enters the context, makes
    ``warmup`` untimed calls, then times ``repeats // 2`` calls. Never both models on the device, and
    drift over time hits both alike. Returns per function: median, IQR and the raw times (the k-th
    times of the two functions form round k)."""
    times: list[list[float]] = [[], []]
    for which in (0, 1, 1, 0):
        with contexts[which]():
            for _ in range(warmup):
                fns[which]()
            for _ in range(max(1, repeats // 2)):
                t0 = clock()
                fns[which]()
                times[which].append(clock() - t0)
    out = []
    for t in times:
        q25, q50, q75 = np.percentile(t, [25, 50, 75])
        out.append({"median": float(q50), "iqr": float(q75 - q25), "times": t})
    return out
