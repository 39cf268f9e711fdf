"""Sandwich Training (paper §3.2, Fig. 1 and 3, Eq. 3): repair step k's replacement locally.

Blocks u..d around the replaced block i (see :func:`fastflux_core.chain.sandwich_bounds`) are trained
in the model as it stands after steps < k. Block i becomes its least-squares linear (stage solve@k);
the unpruned blocks in [u, d] get LoRA (peft); every replaced linear in [u, d] — i's and those of
earlier overlapping steps — is trainable; everything else is frozen. Training maps the state
entering B_u to the state leaving B_d (the current model's, as in the paper, or the original
model's: ``sandwich.target``), minimising the relative squared error

    L = ‖sandwich(x_u) − y_d‖² / ‖y_d‖²     (both streams)

Data: the *training* prompt set (least squares was fitted on the calibration set); the boundary
states x_u and y_d are recomputed from what capture stored (:mod:`fastflux_core.boundary`).

Rounds: the training samples are shuffled and cut into rounds of ``round_samples``; a round's
boundary states are computed once and held in host memory, and the ``train_steps`` are shared out
over the rounds, so each sample's states are computed exactly once (for FLUX.1-dev about 1/6 of what
capture spent on it). When every sample fits in one round, batches are drawn from the whole set.
A batch of ``batch_size`` runs in micro-batches of ``micro_batch`` with gradient accumulation: the
denominator ‖y_d‖² of the whole batch is known before any forward, so the accumulated gradient is
exactly the whole batch's. With ``gradient_checkpointing`` only block inputs are kept for backward.

A share ``sandwich.holdout`` of the training set's prompts is held out whole — every seed and schedule
step of those prompts — so the held-out loss before (least-squares init, fresh LoRA = no change) and
after training is measured on items no fit and no training step saw. Trainable parameters are kept
in float32 (master copies) even when the frozen model is bfloat16. The new chain state = the previous
state + everything trained here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from fastflux_core.blocks import BlockAdapter
from fastflux_core.boundary import (Boundary, BoundaryStates, SandwichBlocks, data_parallel, micro_step, rank_micro_batches,
                                    sandwich_loss)
from fastflux_core.chain import ChainState, PlanStep
from fastflux_core.chain_model import build_chain_model
from fastflux_core.errors import NonFiniteError
from fastflux_core.lora import lora_parameters, lora_tensors
from fastflux_core.params import Params, SandwichParams
from fastflux_core.placement import choose, place_blocks, resolve_device
from fastflux_core.prompts import PromptEmbeds, derive_seed
from fastflux_core.source import load_base_blocks
from fastflux_core.stage import World
from fastflux_core.store import StoreReader
from fastflux_core.training import (BestState, KeepBest, Split, accumulated_step, chain_holdout,
                                    optimizer, pick_rate, rounds)


@contextmanager
def _weights(params: list[nn.Parameter], values: list[torch.Tensor]):
    """Temporarily set ``params`` to ``values`` (the least-squares init, to score it after training)."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


def prepare_sandwich(params: Params, step: PlanStep, state: ChainState,
                     solved: dict[str, tuple[torch.Tensor, torch.Tensor]], conditioning: dict[str, torch.Tensor] | None = None
                     ) -> tuple[BlockAdapter, list[nn.Parameter], list[nn.Module]]:
    """The chain model after steps < k with block i as its least-squares linear and fresh LoRA on the
    sandwich's unpruned blocks; returns it, its trainable parameters (float32, all else frozen), and
    the frozen target blocks u..d (a copy of the current ones taken before any change, or the base
    model's for ``sandwich.target: original``). Placed on the device: the non-block modules, blocks
    u..d and the target copy resident; blocks 0..u-1 resident or offloaded (``placement.choose``);
    blocks after d stay on the host (never run here)."""
    i, (u, d) = step.block, step.sandwich
    adapter = build_chain_model(params, state, new_lora=step.lora_blocks())  # fresh LoRA: B = 0, no change
    model = adapter.model
    model.requires_grad_(False)
    if params.sandwich.target == "current":
        target = [copy.deepcopy(adapter.block(j)) for j in range(u, d + 1)]
    else:
        target = load_base_blocks(params.model, list(range(u, d + 1)))
    rep = adapter.replacement(i, conditioned=bool(conditioning)) if solved else adapter.skip_block(i)  # float32
    for s, (w, b) in solved.items():
        rep.set_affine(s, w, b)
    for s, weight in (conditioning or {}).items():  # timestep-aware (solve.condition: temb): U trains with W, b
        rep.set_conditioning(s, weight)
    adapter.swap(i, rep)
    train_params = lora_parameters(adapter, step.lora_blocks())
    for j in step.linear_blocks():
        train_params += list(adapter.block(j).parameters())
    for p in train_params:
        p.data = p.data.float()  # fp32 master copy; forwards cast to the frozen model's dtype
        p.requires_grad_(True)
    if params.sandwich.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    device = resolve_device(params.model.device)
    offload = choose(f"sandwich@{step.k}", params, device) == "offloaded"
    place_blocks(adapter, [adapter.block(j) for j in range(u)], [adapter.block(j) for j in range(u, d + 1)] + target,
                 device, offload)
    return adapter, train_params, target


class HeldOutCheck:
    """The held-out loss of the sandwich as training goes: on up to ``round_samples`` of the held-out
    samples (a seeded choice among them), whose boundary states are computed once and kept on the
    host beside the round's (each rank its share; the sums are added across ranks, so every rank
    decides alike)."""

    def __init__(self, adapter: BlockAdapter, data: BoundaryStates, holdout: torch.Tensor, u: int, d: int,
                 cfg: SandwichParams, seed: int, world: World):
        pick = torch.randperm(len(holdout), generator=torch.Generator().manual_seed(seed))[:cfg.round_samples]
        mine = world.share(torch.sort(holdout[pick]).values)
        self.states = data.compute(mine) if len(mine) else None
        self.adapter, self.data, self.u, self.d, self.cfg, self.world = adapter, data, u, d, cfg, world
        self.samples = len(pick)

    def __call__(self) -> float:
        sums = torch.zeros(2, dtype=torch.float64)  # squared error, target norm
        if self.states is not None:
            was_training = self.adapter.model.training
            self.adapter.model.eval()
            sums += torch.tensor(sandwich_loss(self.adapter, self.states, self.data.rotary, self.u, self.d,
                                       self.cfg.micro_batch, self.data.device), dtype=torch.float64)
            self.adapter.model.train(was_training)
        num, den = self.world.sum_(sums).tolist()
        return num / max(den, 1e-30)


def fit_sandwich(adapter: BlockAdapter, train_params: list[nn.Parameter], data: BoundaryStates, split: Split,
                 u: int, d: int, cfg: SandwichParams, seed: int, world: World = World()) -> dict:
    """AdamW on the relative sandwich loss over ``split.train``, keeping the state with the lowest
    held-out loss (:mod:`fastflux_core.training`); the held-out loss of the start and of the state
    kept, over every held-out sample.

    Held-out checks every ``eval_every`` steps; the start (least-squares linear, LoRA = no change) is
    the first candidate, so training that only makes things worse — or diverges: a non-finite loss
    stops training — leaves the start. ``patience`` checks without a new best stop training early.
    ``learning_rate: auto`` first tries each of ``probe_rates`` for ``probe_steps`` steps from the
    start on the same batches of the first round and trains with the rate that ended lowest.

    Several ranks train data-parallel on the same global batches: each rank computes the boundary
    states of its contiguous share of each round (the expensive part, forwards through blocks 0..d),
    every rank draws the same batch from the round (same generator), runs the batch's samples it
    holds, and ``DistributedDataParallel`` sums the gradients (each micro-batch loss is scaled by the
    rank count, as DDP averages). The per-sample target norms are summed across ranks, so every rank
    knows the batch's denominator. The held-out samples are split among the ranks and their sums added."""
    model, device = adapter.model, data.device
    g = torch.Generator().manual_seed(seed)
    net = data_parallel(SandwichBlocks(adapter, u, d), world, device)
    plan = rounds(split.train, cfg.train_steps, cfg.round_samples, g) if cfg.train_steps else []
    check = HeldOutCheck(adapter, data, split.holdout, u, d, cfg, derive_seed(seed, "held-out check"), world)

    def micro_losses(b: Boundary, pick: torch.Tensor, n_rows: int, den: torch.Tensor) -> Iterator[torch.Tensor]:
        for mb in rank_micro_batches(pick, n_rows, cfg.micro_batch, world):
            weight = world.size if len(mb) else 0.0  # an empty one still joins DDP's gradient sum
            yield weight * micro_step(net, *b.take(mb if len(mb) else torch.zeros(1, dtype=torch.long), device),
                                      data.rotary, den)

    def round_states(chunk: torch.Tensor) -> tuple[Boundary, torch.Tensor]:
        """The boundary states of this rank's share of a round (store order), and every sample's ‖y_d‖²."""
        order = torch.sort(chunk).values
        own = world.part(len(order))
        b = data.compute(order[own.start : own.stop] if len(own) else order[:1])  # a rank with none: a stand-in
        norms = torch.zeros(len(order))
        if len(own):
            norms[own.start : own.stop] = b.sample_norms()
        return b, world.sum_(norms)

    def train_steps(opt, b: Boundary, norms: torch.Tensor, n_steps: int, gen: torch.Generator, at: int,
                    on_step=lambda step, loss: False) -> None:
        """Up to ``n_steps`` batches from one round, steps ``at + 1``… on; ``on_step`` returning True
        ends them early, a non-finite batch loss raises."""
        for n in range(n_steps):
            pick = torch.randint(len(norms), (min(cfg.batch_size, len(norms)),), generator=gen)
            den = norms[pick].sum().clamp(min=1e-30).to(device)
            loss = accumulated_step(opt, train_params, micro_losses(b, pick, len(norms), den),
                                    f"sandwich loss at training step {at + n}", world) / world.size
            if on_step(at + n + 1, loss):  # the batch loss: each rank's share was scaled by the rank count
                return

    first = round_states(plan[0][0]) if plan else None
    start = BestState(train_params, check())
    rate, probe = cfg.learning_rate, None
    model.train()
    if rate == "auto" and plan:
        def held_out_after(r: float) -> float:
            start.restore()
            try:
                train_steps(optimizer(train_params, r), *first, cfg.probe_steps,
                            torch.Generator().manual_seed(derive_seed(seed, "learning-rate probe")), 0)
            except NonFiniteError:
                return math.inf
            return check()

        rate, probe = pick_rate(cfg.probe_rates, held_out_after)
        start.restore()
    elif rate == "auto":
        rate = min(cfg.probe_rates)

    opt = optimizer(train_params, rate)
    bar = tqdm(total=cfg.train_steps, desc="sandwich", unit="step", disable=not world.is_main)
    keep = KeepBest(train_params, start, check, cfg.eval_every, cfg.train_steps, cfg.patience, "sandwich loss", bar)
    try:
        for r, (chunk, n_steps) in enumerate(plan):
            b, norms = first if r == 0 else round_states(chunk)
            first = None  # round 0's states go with the round
            train_steps(opt, b, norms, n_steps, g, len(keep.losses), keep)
            if keep.stopped:
                break
    except NonFiniteError as e:  # diverged: the best state so far (the start at worst) is what training gives
        keep.stopped = f"{e}: training stopped"
    bar.close()
    model.eval()
    keep.best.restore()

    sums = torch.zeros(3, dtype=torch.float64)  # kept state's error, least-squares start's error, target norm
    for chunk in split.holdout.split(cfg.round_samples):
        mine = world.share(torch.sort(chunk).values)
        if not len(mine):
            continue
        b = data.compute(mine)
        num, den = sandwich_loss(adapter, b, data.rotary, u, d, cfg.micro_batch, device)
        with _weights(train_params, start.values):
            num0, _ = sandwich_loss(adapter, b, data.rotary, u, d, cfg.micro_batch, device)
        sums += torch.tensor([num, num0, den], dtype=torch.float64)
    kept, before, norm = world.sum_(sums).tolist()
    best_step = keep.best.step
    if kept > before:  # the checks saw a subset of the held-out samples; on all of them the start wins
        start.restore()
        kept, best_step = before, 0
    return {"holdout_loss_init": before / max(norm, 1e-30), "holdout_loss_trained": kept / max(norm, 1e-30),
            "best_step": best_step, "steps_run": len(keep.losses), "stopped": keep.stopped, "learning_rate": rate,
            "learning_rate_probe": probe, "holdout_checks": [[s, v] for s, v in keep.when.history],
            "holdout_check_samples": check.samples,
            "train_loss_first": keep.losses[0] if keep.losses else None,
            "train_loss_last": keep.losses[-1] if keep.losses else None, "rounds": len(plan)}


def train_sandwich(params: Params, step: PlanStep, state: ChainState,
                   solved: dict[str, tuple[torch.Tensor, torch.Tensor]], store: StoreReader,
                   embeds: PromptEmbeds, world: World = World(), conditioning: dict[str, torch.Tensor] | None = None
                   ) -> tuple[ChainState, dict]:
    """Train step k's sandwich on the training store (inputs) and the training prompts' encoded
    states; return the new chain state and a record (the same on every rank: DDP keeps the ranks'
    weights equal). ``conditioning``: the U of a timestep-aware solution. With ``sandwich.train:
    false`` the state is the previous one plus block i's replacement as solved (no LoRA, nothing
    trained)."""
    cfg = params.sandwich
    if not cfg.train:
        return untrained_step(step, state, solved, store.attrs["kind"], conditioning)
    i, (u, d) = step.block, step.sandwich
    lora_blocks, linear_blocks = step.lora_blocks(), step.linear_blocks()
    adapter, train_params, target = prepare_sandwich(params, step, state, solved, conditioning)
    data = BoundaryStates(store, embeds, adapter, target, u, cfg.micro_batch, resolve_device(params.model.device))
    split = chain_holdout(store, params.sandwich.holdout, params.seed)
    losses = fit_sandwich(adapter, train_params, data, split, u, d, cfg,
                          derive_seed(params.seed, "sandwich-batches", step.k), world)

    kind = adapter.blocks[i].kind
    new = ChainState(step=step.k, kinds=dict(state.kinds), linears=dict(state.linears),
                     lora={j: t for j, t in state.lora.items() if j not in step.replaced},
                     lora_config={"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha}, history=list(state.history),
                     temb=dict(state.temb))
    new.kinds[i] = kind
    for j in linear_blocks:
        blk = adapter.block(j)
        new.linears[j] = {s: (lin.weight.detach().float().cpu(), lin.bias.detach().float().cpu())
                          for s, lin in getattr(blk, "linears", {}).items()}  # a SkipBlock (deleted): none
        if getattr(blk, "temb_linears", None) is not None:
            new.temb[j] = {s: lin.weight.detach().float().cpu() for s, lin in blk.temb_linears.items()}
    new.lora.update({j: {n: t.float() for n, t in named.items()} for j, named in lora_tensors(adapter, lora_blocks).items()})
    seeds = store.read("seed")
    record = {
        "step": step.k, "block": i, "sandwich": [u, d], "lora_blocks": lora_blocks, "linear_blocks": linear_blocks,
        "trainable_params": sum(p.numel() for p in train_params), "train_samples": len(split.train),
        "holdout_samples": len(split.holdout), "holdout_prompts": len(split.holdout_prompts),
        "holdout_items": len({int(v) for v in seeds[split.holdout]}), **losses, "target": cfg.target,
        "trained": True, "replacement": replacement_kind(solved, conditioning),
    }
    new.history.append(record)
    return new, record


def replacement_kind(solved: dict[str, tuple[torch.Tensor, torch.Tensor]], conditioning: dict | None = None) -> str:
    """What stage solve gave block i: a least-squares linear per stream ("brll"), timestep-aware
    ("brll_temb"), or nothing ("delete")."""
    return ("brll_temb" if conditioning else "brll") if solved else "delete"


def untrained_step(step: PlanStep, state: ChainState, solved: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   kind: str, conditioning: dict[str, torch.Tensor] | None = None) -> tuple[ChainState, dict]:
    """Step k without Sandwich Training (paper Fig. 6 "w/o ST"): block i takes its replacement as
    solved, nothing else changes — the next step captures from this model, so the untrained chain
    is progressive too."""
    new = ChainState(step=step.k, kinds={**state.kinds, step.block: kind},
                     linears={**state.linears, step.block: {s: (w.float(), b.float()) for s, (w, b) in solved.items()}},
                     lora={j: t for j, t in state.lora.items() if j not in step.replaced},
                     lora_config=state.lora_config, history=list(state.history),
                     temb={**state.temb, **({step.block: {s: w.float() for s, w in conditioning.items()}} if conditioning else {})})
    record = {"step": step.k, "block": step.block, "trained": False, "replacement": replacement_kind(solved, conditioning)}
    new.history.append(record)
    return new, record
