"""The ratio sweep (paper Table 6): every chain length assembled from the chain and scored.

Stage ``sweep`` builds the model with n = 0..K blocks replaced (``evaluate.sweep_lengths`` picks some)
from the chain's states (:func:`fastflux_core.assemble.pruned_model`: with ``sandwich.reuse`` the
components trained furthest) and scores each as stage ``evaluate`` scores the exported model
(:class:`fastflux_core.evaluation.Evaluator`, on ``evaluate.sweep_items`` of the evaluation items):
quality and FLOPs into the sweep's metrics, latency into its timings. Its own module because it is the
one scoring that needs the chain: stage ``evaluate`` loads the assembled model and nothing of the chain.
"""

from __future__ import annotations

from pathlib import Path

from fastflux_core.assemble import pruned_model
from fastflux_core.evaluation import Evaluator
from fastflux_core.metrics import QUALITY_KEYS
from fastflux_core.params import Params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.stage import World


def sweep(params: Params, states: list, embeds: PromptEmbeds, reference: Path, world: World = World()
          ) -> tuple[list[dict], list[dict]] | None:
    """Stage ``sweep``: every chain length n = 0..K (quality, FLOPs; latency separately) — the
    quality/speed-versus-ratio curves (paper Table 6), independent of ``ratio``. On the main rank;
    every rank generates its share of each model's images, the others return ``None``."""
    cfg = params.evaluate
    ev = Evaluator(params, embeds, reference, world, cfg.sweep_items)
    rows, timings = [], []
    lengths = range(len(states)) if cfg.sweep_lengths is None else sorted(set(cfg.sweep_lengths))  # checked: params
    for k in lengths:
        adapter = pruned_model(params, states, k)[0]
        model, n_blocks = adapter.model, len(adapter.blocks)
        scored = ev.quality_of(model, tag=f"n{k}")
        if scored is None:
            continue
        q = scored[0]
        flops, lat = ev.speed_of(model)
        rows.append({"n_pruned": k, "ratio": k / n_blocks,
                     **{key: q[key] for key in QUALITY_KEYS if key in q},
                     "flops_ratio": flops["flops_ratio"], "model": flops["model"]})
        timings.append({"n_pruned": k, "latency_ratio": lat["latency_ratio"], "latency_ratio_iqr": lat["latency_ratio_iqr"],
                        "model": lat["model"]})
    return (rows, timings) if world.is_main else None
