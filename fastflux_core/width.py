"""L1-norm structured width pruning: the paper's baseline (§4, Tables 1–2, Fig. 5), compared with
FastFLUX at the same cost.

Where FastFLUX replaces whole blocks, this baseline makes every MLP narrower. Each MLP
(:meth:`~fastflux_core.flux.FluxAdapter.mlps`) is one pruning group: its hidden units are the
up-projection's output channels and the matching input columns of the down-projection. A unit's
importance is the L1 norm of every weight removed with it — up row, up bias, down column — summed as
torch-pruning's ``GroupMagnitudeImportance(p=1)`` sums a group; every MLP keeps the same share of its
units (a multiple of ``baseline.round_to``), and torch-pruning's ``prune_linear_out_channels`` /
``prune_linear_in_channels`` cut the rest.

Why the groups are given, not traced by torch-pruning's ``DependencyGraph``: traced through a FLUX
single block, it ties ``proj_mlp``'s channels to the attention's q/k projections and RMSNorm weights
across ``cat([attention, mlp])`` (tests/test_width.py shows it), which would cut the wrong channels.
Attention heads are kept: the MLPs hold two thirds of a block's linear FLOPs, more than any ratio of
the paper's tables needs.

Matching: a forward's FLOPs are affine in the kept share (each MLP matmul is linear in its width), so
one count of the base, per module, gives the share that meets a FLOPs target; the pruned model is
counted again and both numbers are reported.

Fine-tuning, with the budget FastFLUX had: the pruned model is distilled towards the base
(:mod:`fastflux_core.distill`) on the training store's captured transformer inputs (the items the
sandwiches trained on) for as many AdamW steps of the same batch size as the sandwiches that produced
the FastFLUX model took (with ``sandwich.reuse`` every step of the chain, else the first n) plus the
finisher's ``finish.steps``, minimising ‖student(x) − base(x)‖² / ‖base(x)‖² on the transformer's
output, keeping its best held-out state. ``full`` trains every weight, as the paper's L1 models were
(AdamW's state: ~16 bytes per parameter); ``lora`` trains LoRA of ``sandwich.lora_rank`` on every
block linear; ``lora_matched`` LoRA at the rank that fits FastFLUX's own trainable-parameter count.
The first sandwich's held-out training prompts give the loss before and after.

>>> kept_width(256, 0.8, 8), kept_width(256, 0.01, 8), share_for_flops(100, 60, 0.85)
(208, 8, 0.75)
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastflux_core.blocks import BlockAdapter, MlpRef, ModelInputs
from fastflux_core.chain import state_for_steps
from fastflux_core.distill import distill
from fastflux_core.errors import FastFluxError
from fastflux_core.evaluation import Evaluator, call_model, comparison_grid
from fastflux_core.export import merge_lora
from fastflux_core.families import adapter_for
from fastflux_core.finish import finished_model
from fastflux_core.lora import inject_lora, lora_parameters, target_regex
from fastflux_core.metrics import QUALITY_KEYS
from fastflux_core.params import BaselineParams, Params, n_replaced
from fastflux_core.prompts import PromptEmbeds, derive_seed
from fastflux_core.reference import load_reference_images
from fastflux_core.source import load_transformer
from fastflux_core.speed import count_flops_by_module
from fastflux_core.store import StoreReader
from fastflux_core.training import CapturedInputs, Split, chain_holdout


def unit_importance(mlp: MlpRef) -> torch.Tensor:
    """(H,) L1 norm of each hidden unit's weights: its up row and bias, its down column."""
    width = mlp.up.out_features
    norm = mlp.up.weight.detach().float().abs().sum(1)  # (H,)
    if mlp.up.bias is not None:
        norm = norm + mlp.up.bias.detach().float().abs()
    return norm + mlp.down.weight.detach()[:, mlp.offset:mlp.offset + width].float().abs().sum(0)


def kept_width(width: int, share: float, round_to: int) -> int:
    """Units an MLP of ``width`` keeps: ``share`` of them to the nearest multiple of ``round_to``
    (at least one multiple, at most all)."""
    return min(width, max(round_to, round_to * round(width * share / round_to)))


def share_for_flops(flops_base: float, flops_width: float, target_ratio: float) -> float:
    """The kept share s with flops_base − (1 − s) · flops_width = target_ratio · flops_base, where
    ``flops_width`` is the part of the base's FLOPs proportional to the MLP widths."""
    cut = (1.0 - target_ratio) * flops_base
    if cut >= flops_width:
        raise FastFluxError(f"MLP width pruning cannot reach a FLOPs ratio of {target_ratio:.3f}: the MLPs hold "
                            f"{flops_width / flops_base:.1%} of the FLOPs; lower baseline.ratios")
    return 1.0 - cut / flops_width


def width_flops(adapter: BlockAdapter, per_module: dict[str, int]) -> int:
    """The FLOPs (of a forward counted per module) that scale with the MLP widths: every up-projection,
    and each down-projection's share that reads the hidden units."""
    names = {m: n for n, m in adapter.model.named_modules()}
    total = 0.0
    for mlp in adapter.mlps():
        total += per_module.get(names[mlp.up], 0)
        total += per_module.get(names[mlp.down], 0) * mlp.up.out_features / mlp.down.in_features
    return int(total)


def prune_widths(adapter: BlockAdapter, share: float, round_to: int) -> dict[str, int]:
    """Cut every MLP to :func:`kept_width` units, the lowest-L1 ones first (in place); kept widths."""
    import torch_pruning as tp

    kept = {}
    for mlp in adapter.mlps():
        width = mlp.up.out_features
        keep = kept_width(width, share, round_to)
        drop = torch.argsort(unit_importance(mlp))[:width - keep].sort().values.tolist()
        if drop:
            tp.prune_linear_out_channels(mlp.up, drop)
            tp.prune_linear_in_channels(mlp.down, [mlp.offset + j for j in drop])
        kept[mlp.name] = keep
    return kept


def width_share(model: nn.Module, x: ModelInputs, target_ratio: float) -> float:
    """The share of MLP units every MLP of ``model`` keeps so that a forward on ``x`` costs
    ``target_ratio`` of its FLOPs now (one count, split by module: FLOPs are affine in the share)."""
    flops, per_module = count_flops_by_module(lambda: call_model(model, x))
    return share_for_flops(flops, width_flops(adapter_for(model), per_module), target_ratio)


def l1_widths(ev: Evaluator, target_flops_ratio: float, round_to: int) -> tuple[int, ...]:
    """The MLP widths an L1 model at ``target_flops_ratio`` keeps (:func:`l1_model` prunes to them), read
    off the base: FLOPs depend on the architecture, not the weights."""
    with ev.on_device(ev.base):
        share = width_share(ev.base, ev.x, target_flops_ratio)
    return tuple(kept_width(mlp.up.out_features, share, round_to) for mlp in adapter_for(ev.base).mlps())


def chain_trainable_params(states: list, n: int, reuse: bool) -> int:
    """Parameters the chain trained that are in the FastFLUX model with ``n`` blocks replaced: its
    replaced blocks' linears and its LoRA adapters (:func:`~fastflux_core.chain.state_for_steps`),
    each counted once however many overlapping sandwiches trained it."""
    state = state_for_steps(states, n, reuse)
    linears = sum(t.numel() for streams in state.linears.values() for pair in streams.values() for t in pair)
    return linears + sum(t.numel() for named in state.lora.values() for t in named.values())


def lora_rank_for(adapter: BlockAdapter, budget: int) -> int:
    """The largest LoRA rank (≥ 1) on every block's LoRA targets whose parameters fit ``budget``: a
    rank-r adapter on an (in, out) linear has r · (in + out) parameters.

    >>> from types import SimpleNamespace as NS
    >>> lin = nn.Linear(8, 8)
    >>> fake = NS(blocks=[NS(path="b")], lora_targets=lambda i: ["q"], model=NS(named_modules=lambda: [("b.q", lin)]))
    >>> lora_rank_for(fake, 100), lora_rank_for(fake, 5)
    (6, 1)
    """
    pattern = re.compile(target_regex(adapter, list(range(len(adapter.blocks)))))
    per_rank = sum(m.in_features + m.out_features for name, m in adapter.model.named_modules()
                   if isinstance(m, nn.Linear) and pattern.fullmatch(name))
    return max(1, budget // per_rank)


def trainable(params: Params, adapter: BlockAdapter, matched_params: int) -> tuple[list[nn.Parameter], int | None]:
    """The parameters fine-tuning updates, in float32 (``full``: the whole model is made float32), and
    the LoRA rank (``lora``: ``sandwich.lora_rank``; ``lora_matched``: the rank whose parameters fit
    ``matched_params``, FastFLUX's own trainable count, at the sandwiches' alpha/rank scaling)."""
    model = adapter.model
    model.requires_grad_(False)
    rank = None
    if params.baseline.finetune == "full":
        model.float()
        train_params = list(model.parameters())
    else:
        cfg = params.sandwich
        rank = cfg.lora_rank if params.baseline.finetune == "lora" else lora_rank_for(adapter, matched_params)
        blocks = list(range(len(adapter.blocks)))
        inject_lora(adapter, blocks, rank, cfg.lora_alpha * rank / cfg.lora_rank, derive_seed(params.seed, "baseline-lora"))
        train_params = lora_parameters(adapter, blocks)
        for p in train_params:
            p.data = p.data.float()
    for p in train_params:
        p.requires_grad_(True)
    if params.baseline.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return train_params, rank


def _scores(q: dict, flops: dict) -> dict:
    """Quality with its item readings (intervals, FID floor and excess: everything but the alignment's
    name), FLOPs ratio and the weights' digest."""
    return {**{k: v for k, v in q.items() if isinstance(v, float)}, "flops_ratio": flops["flops_ratio"],
            "model": flops["model"]}


def _timing(lat: dict) -> dict:
    return {k: lat[k] for k in ("latency_ratio", "latency_ratio_iqr", "model")}


def l1_model(params: Params, ev: Evaluator, states: list, n: int, inputs: CapturedInputs, split: Split,
             target_flops_ratio: float, items_out: Path) -> tuple[dict, dict, np.ndarray]:
    """The base width-pruned to ``target_flops_ratio`` of its FLOPs and fine-tuned with FastFLUX's
    budget at ``n`` blocks replaced (module doc): its record (quality before and after fine-tuning,
    FLOPs, the fine-tuning's losses and budget), its latency against the base, and its images."""
    student = load_transformer(params.model)  # a fresh base, pruned in place on the host
    with ev.on_device(student):
        share = width_share(student, ev.x, target_flops_ratio)
    widths = sorted(set(prune_widths(adapter_for(student), share, params.baseline.round_to).values()))
    record = {"target_flops_ratio": target_flops_ratio, "kept_share": share, "kept_widths": widths,
              "params": sum(p.numel() for p in student.parameters()),
              "params_base": sum(p.numel() for p in ev.base.parameters())}
    q_pruned, _, _ = ev.quality_of(student)
    adapter = adapter_for(student)
    cfg = params.sandwich
    ours_trainable = chain_trainable_params(states, n, cfg.reuse)
    train_params, lora_rank = trainable(params, adapter, ours_trainable)
    steps = cfg.train_steps * (len(states) - 1 if cfg.reuse else n) + params.finish.steps  # FastFLUX's whole budget
    teacher = adapter_for(ev.base)
    ev.base.to(ev.device)
    student.to(ev.device)
    start = time.perf_counter()
    losses = distill(adapter, teacher, train_params, inputs, split, steps, cfg, params.baseline.micro_batch,
                     params.baseline.learning_rate, params.baseline.probe_rates,
                     derive_seed(params.seed, "baseline-batches", n), ev.device, params.baseline.objective)
    seconds = time.perf_counter() - start
    ev.base.to("cpu")
    student.to("cpu")
    merge_lora(student)
    student.to(ev.base.dtype)
    q_l1, images, _ = ev.quality_of(student, items_out=items_out)
    f_l1, lat_l1 = ev.speed_of(student)
    metrics = {**_scores(q_l1, f_l1), **record, **losses, "finetune": params.baseline.finetune,
               "train_steps": steps, "batch_size": cfg.batch_size, "trainable_params": sum(p.numel() for p in train_params),
               "lora_rank": lora_rank, "fastflux_trainable_params": ours_trainable,
               "untuned": {k: q_pruned[k] for k in QUALITY_KEYS if k in q_pruned}}
    return metrics, {**_timing(lat_l1), "finetune_seconds": seconds}, images


def matchings(baseline: BaselineParams, ours_flops_ratio: float) -> dict[str, float]:
    """The L1 models to build, by what they are matched on: their FLOPs targets. ``flops``: FastFLUX's
    FLOPs ratio; ``latency`` (when ``baseline.latency_flops_cut`` is set): the FLOPs ratio whose cut is
    that multiple of FastFLUX's — the multiple at which, at FLUX.1-dev's width, an L1 model is as fast as
    a FastFLUX model (``benchmarks/latency_match.py`` measures it).

    >>> from types import SimpleNamespace as NS
    >>> matchings(NS(latency_flops_cut=1.5), 0.8)
    {'flops': 0.8, 'latency': 0.7}
    """
    out = {"flops": ours_flops_ratio}
    cut = baseline.latency_flops_cut
    if cut is not None:
        out["latency"] = round(1.0 - cut * (1.0 - ours_flops_ratio), 12)
    return out


def compare_at(params: Params, ev: Evaluator, states: list, n: int, inputs: CapturedInputs, split: Split,
               out: Path) -> tuple[dict, dict]:
    """FastFLUX with ``n`` blocks replaced vs the base width-pruned to its FLOPs (``l1``) — and to the
    FLOPs at which it is as fast, when known (``l1_latency``, :func:`matchings`) — and fine-tuned: their
    quality, FLOPs and (separately) latency; the grid prompt | full | FastFLUX | L1 … to ``out``."""
    ours = finished_model(params, states, n, (inputs, split))[0].model  # finished too when finish.steps > 0
    q_ours, img_ours, prompts = ev.quality_of(ours, items_out=out / f"items_n{n}_fastflux.safetensors")
    f_ours, lat_ours = ev.speed_of(ours)
    del ours
    metrics = {"n_pruned": n, "fastflux": _scores(q_ours, f_ours)}
    timings = {"fastflux": _timing(lat_ours)}
    columns = {"full": load_reference_images(ev.reference_dir), "FastFLUX": img_ours}
    built: dict[tuple[int, ...], str] = {}  # kept widths → the key of the L1 model built with them
    label_of: dict[str, str] = {}  # key → its grid column
    for match, target in matchings(params.baseline, f_ours["flops_ratio"]).items():
        key = "l1" if match == "flops" else f"l1_{match}"
        if target <= 0:  # no model has a FLOPs ratio ≤ 0: say so and go on (the FLOPs match still stands)
            metrics[key] = {"matched_on": match, "target_flops_ratio": target, "unreachable":
                            f"{params.baseline.latency_flops_cut} × FastFLUX's FLOPs cut is all of the FLOPs"}
            continue
        try:
            widths = l1_widths(ev, target, params.baseline.round_to)
            if widths in built:
                # the same widths keep the same units, and the fine-tuning's seeds and budget depend on n only:
                # the model already built, not trained a second time (at 1 block of 12 both matches round alike)
                same = built[widths]
                metrics[key] = {**metrics[same], "matched_on": match, "target_flops_ratio": target, "same_model_as": same}
                metrics[f"{key}_untuned"], timings[key] = metrics[f"{same}_untuned"], timings[same]
                # its per-image readings too: the report's interval over prompts opens this model's file
                shutil.copyfile(out / f"items_n{n}_{same}.safetensors", out / f"items_n{n}_{key}.safetensors")
                columns[f"L1 ({match})"] = columns[label_of[same]]
                continue
            m, t, images = l1_model(params, ev, states, n, inputs, split, target, out / f"items_n{n}_{key}.safetensors")
        except FastFluxError as err:  # MLP width pruning cannot reach the target: recorded, not fatal
            if match == "flops":
                raise
            metrics[key] = {"matched_on": match, "target_flops_ratio": target, "unreachable": str(err)}
            continue
        built[widths] = key
        metrics[f"{key}_untuned"] = m.pop("untuned")
        metrics[key], timings[key] = {**m, "matched_on": match}, t
        label_of[key] = "L1" if match == "flops" else f"L1 ({match})"
        columns[label_of[key]] = images
    comparison_grid(columns, prompts, min(params.evaluate.grid_rows, len(prompts))).save(out / f"grid_n{n}.png")
    return metrics, timings


def baseline(params: Params, states: list, store: StoreReader, train_embeds: PromptEmbeds,
             eval_embeds: PromptEmbeds, reference: Path, out: Path) -> tuple[dict, dict]:
    """Stage ``baseline``: :func:`compare_at` at every ratio of ``baseline.ratios``; (metrics, timings)
    keyed ``n<blocks replaced>``, as the sweep's."""
    ev = Evaluator(params, eval_embeds, reference)
    n_blocks = len(adapter_for(ev.base).blocks)
    inputs = CapturedInputs(store, train_embeds, ev.base, torch.device("cpu"))  # rounds are held on the host
    split = chain_holdout(store, params.sandwich.holdout, params.seed)  # the prompts no sandwich trained on
    metrics, timings = {}, {}
    for r in params.baseline.ratios:
        n = n_replaced(r, n_blocks)
        m, t = compare_at(params, ev, states, n, inputs, split, out)
        metrics[f"n{n}"] = {**m, "ratio": r, "n_blocks": n_blocks}
        timings[f"n{n}"] = t
    return metrics, timings

