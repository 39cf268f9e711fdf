"""At what FLOPs is an L1 width-pruned model as fast as a FastFLUX model? Measured at FLUX.1-dev's width.

The report's baseline is matched on FLOPs, but a user buys latency, and the two methods turn FLOPs into
latency differently: FastFLUX removes whole blocks (every kernel of the block goes, attention and
norms included), L1 width pruning narrows every MLP (the attention, the norms, the modulation and the
launch overhead stay). The embedded default is far too small to show that on a CPU (its forward is
bound by overheads, not matmuls), so this benchmark times both kinds of pruned model on the FLUX-width
rehearsal's architecture — FLUX.1-dev's blocks (hidden 3072, 24 heads, joint 4096), 1 double + 3 single
blocks, bf16, 384² with 128 text tokens as ``examples/flux-width/params.yaml`` — where the forward is
compute-bound even here. Weights are random: latency does not depend on their values.

1. FastFLUX: each ``--cases`` set of blocks replaced by :class:`~fastflux_core.pruned_flux.LinearReplacement`
   — FLOPs ratio f and latency ratio ℓ against the base.
2. L1: the base with every MLP cut to each of ``--shares`` (:func:`~fastflux_core.width.prune_widths`,
   widths a multiple of 64) — the latency ratio as a function of the share.
3. For each FastFLUX case, the share whose interpolated latency equals its ℓ is cut and timed again
   (so the match is measured, not interpolated); its FLOPs ratio f_L1 gives the *cut factor*
   (1 − f_L1) / (1 − f): how many times FastFLUX's FLOPs cut an L1 model needs to be as fast.

Each comparison is timed by :func:`~fastflux_core.evaluation.speed_against` (A B B A phases, median;
the ratio's IQR over rounds is reported beside it). The cut factor the baseline uses
(``baseline.latency_flops_cut``; ``scripts/report.sh`` passes it) is the median over the cases.

Prints a table and writes benchmarks/results/latency_match.json (about 7 minutes on 2 cores, nothing
else running: other load on the cores shows up as a wide IQR).
Run: python benchmarks/latency_match.py [--repeats 8] [--shares 0.75,0.5,0.25,0.125]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics

import numpy as np
import torch

from common import report

from fastflux_core import published
from fastflux_core.blocks import ModelInputs
from fastflux_core.codec import latent_ids
from fastflux_core.evaluation import speed_against
from fastflux_core.families import adapter_for
from fastflux_core.pruned_flux import LinearReplacement
from fastflux_core.width import prune_widths


def rehearsal_model(num_layers: int, num_single_layers: int, dtype: torch.dtype):
    """FLUX.1-dev's transformer config with fewer blocks, random weights."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    cfg = {k: v for k, v in published.FLUX1_DEV_TRANSFORMER.items() if not k.startswith("_")}
    cfg.update(num_layers=num_layers, num_single_layers=num_single_layers)
    return FluxTransformer2DModel(**cfg).to(dtype).eval()


def inputs(model, size: int, text_tokens: int) -> ModelInputs:
    """One denoising call's inputs at ``size``² (FLUX: 8× VAE, 2×2 packing), batch 1, random."""
    h = w = size // 8
    g = torch.Generator().manual_seed(0)
    dtype, cfg = model.dtype, model.config
    return ModelInputs(
        hidden_states=torch.randn(1, (h // 2) * (w // 2), cfg.in_channels, generator=g).to(dtype),  # (1, N_img, 64)
        encoder_hidden_states=torch.randn(1, text_tokens, cfg.joint_attention_dim, generator=g).to(dtype),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g).to(dtype),
        timestep=torch.full((1,), 0.5, dtype=dtype), img_ids=latent_ids(h, w, "cpu", dtype),
        txt_ids=torch.zeros(text_tokens, 3, dtype=dtype), guidance=torch.full((1,), 3.5), grid=(h, w))


def fastflux_model(base, blocks: list[int]):
    """``base`` with ``blocks`` replaced by (random) BRLL linears."""
    model = copy.deepcopy(base)
    adapter = adapter_for(model)
    for i in blocks:
        adapter.swap(i, LinearReplacement(model.inner_dim, adapter.blocks[i].kind).to(base.dtype))
    return model


def l1_model(base, share: float, round_to: int):
    """``base`` with every MLP cut to ``share`` of its units (lowest L1 norm first)."""
    model = copy.deepcopy(base)
    kept = prune_widths(adapter_for(model), share, round_to)
    return model, sorted(set(kept.values()))


def timed(base, model, x: ModelInputs, warmup: int, repeats: int) -> dict:
    """FLOPs ratio and latency ratio (median, IQR over rounds) of ``model`` against ``base``."""
    with torch.inference_mode():
        flops, lat = speed_against(base, model, x, lambda m: contextlib.nullcontext(), warmup, repeats)
    return {"flops_ratio": flops["flops_ratio"], "latency_ratio": lat["latency_ratio"],
            "latency_ratio_iqr": lat["latency_ratio_iqr"], "latency_ms_base": lat["latency_ms_base"],
            "latency_ms": lat["latency_ms"]}


def share_at_latency(curve: list[tuple[float, float]], latency_ratio: float) -> float | None:
    """The share whose latency ratio, linearly interpolated on ``curve`` [(share, latency ratio)],
    equals ``latency_ratio`` (None below the narrowest share measured).

    >>> round(share_at_latency([(1.0, 1.0), (0.5, 0.6)], 0.8), 6)
    0.75
    """
    pts = sorted(curve)  # by share, ascending
    shares, lats = [p[0] for p in pts], [p[1] for p in pts]
    if latency_ratio < min(lats):
        return None
    lats_up = np.maximum.accumulate(lats)  # monotone in the share (timing noise can bend it)
    return float(np.interp(latency_ratio, lats_up, shares))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--double", type=int, default=1, help="double blocks (FLUX.1-dev: 19)")
    ap.add_argument("--single", type=int, default=3, help="single blocks (FLUX.1-dev: 38)")
    ap.add_argument("--size", type=int, default=384, help="image side in pixels")
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--cases", default="0;1;0,1;1,2", help="FastFLUX cases: block sets, ';'-separated")
    ap.add_argument("--shares", default="0.75,0.5,0.25,0.125", help="L1 shares timed for the latency curve (low "
                    "enough to reach the two-block cases: at 0.25 an L1 model was still slower than FastFLUX there)")
    ap.add_argument("--round-to", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=8, help="timed calls per model (A B B A: a quarter per phase)")
    args = ap.parse_args()

    base = rehearsal_model(args.double, args.single, torch.bfloat16)
    x = inputs(base, args.size, args.text_tokens)
    kinds = [b.kind for b in adapter_for(base).blocks]
    cases = [[int(i) for i in c.split(",")] for c in args.cases.split(";")]

    ours = {}
    for blocks in cases:
        name = "+".join(f"{kinds[i]} {i}" for i in blocks)
        ours[name] = {"blocks": blocks, **timed(base, fastflux_model(base, blocks), x, args.warmup, args.repeats)}
        print(f"FastFLUX {name}: {ours[name]}", flush=True)
    curve = {}
    for share in [float(s) for s in args.shares.split(",")]:
        model, widths = l1_model(base, share, args.round_to)
        curve[share] = {"kept_widths": widths, **timed(base, model, x, args.warmup, args.repeats)}
        print(f"L1 share {share}: {curve[share]}", flush=True)
    points = [(1.0, 1.0)] + [(s, r["latency_ratio"]) for s, r in curve.items()]
    matched = {}
    for name, o in ours.items():
        share = share_at_latency(points, o["latency_ratio"])
        if share is None:
            matched[name] = {"reachable": False}
            continue
        model, widths = l1_model(base, share, args.round_to)
        m = timed(base, model, x, args.warmup, args.repeats)
        matched[name] = {"reachable": True, "share": share, "kept_widths": widths, **m,
                         "cut_factor": (1 - m["flops_ratio"]) / (1 - o["flops_ratio"])}
        print(f"L1 as fast as FastFLUX {name}: {matched[name]}", flush=True)
    cuts = [m["cut_factor"] for m in matched.values() if m["reachable"]]
    result = {"config": {**vars(args), "dtype": "bfloat16", "threads": torch.get_num_threads()},
              "fastflux": ours, "l1_curve": {str(s): r for s, r in curve.items()}, "l1_matched": matched,
              "cut_factor": statistics.median(cuts) if cuts else None,
              "cut_factor_range": [min(cuts), max(cuts)] if cuts else None}
    print(f"\n{'FastFLUX case':<24}{'FLOPs':>8}{'latency':>9}   L1 as fast: {'share':>6}{'FLOPs':>8}{'latency':>9}{'cut ×':>7}")
    for name, o in ours.items():
        m = matched[name]
        tail = (f"{m['share']:>6.3f}{m['flops_ratio']:>8.3f}{m['latency_ratio']:>9.3f}{m['cut_factor']:>7.2f}"
                if m["reachable"] else "  not reachable by the shares timed")
        print(f"{name:<24}{o['flops_ratio']:>8.3f}{o['latency_ratio']:>9.3f}   {'':12}{tail}")
    report("latency_match", result)


if __name__ == "__main__":
    main()
