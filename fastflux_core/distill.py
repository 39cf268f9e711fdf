"""Distillation: a pruned model trained towards its base model, globally or block by block.

What the paper's L1 baseline is fine-tuned with (:mod:`fastflux_core.width`) and what FastFLUX's
optional finisher does after the chain (:mod:`fastflux_core.finish`): on the training store's
captured transformer inputs (noisy latent, timestep, guidance, prompt), minimise (``global``)

    L = ‖student(x) − base(x)‖² / ‖base(x)‖²        (the transformer's output, every image token)

or (``local``, the baseline's ``baseline.objective``: the kind of loss FastFLUX's sandwiches train on,
for a model whose every block changed) each block's output given the base's input to that block,

    L = Σ_b ‖S_b(h_b) − T_b(h_b)‖² / Σ_b ‖T_b(h_b)‖²   (h_b: the base's state before block b, both streams)

so that a comparison of FastFLUX with the baseline can hold the objective fixed: local for both
(sandwiches; L1 ``local``), or global for both (the finisher; L1 ``global``).

in rounds of ``sandwich.round_samples`` samples whose base outputs are computed once, for a given
number of AdamW steps of ``sandwich.batch_size`` samples; ``micro_batch``-sized pieces accumulate the
exact batch gradient (the batch's ‖base(x)‖² is known first). The same care as a sandwich
(:mod:`fastflux_core.training`): the state kept is the one with the lowest held-out loss — the
student's start included — on the store's held-out prompts, and ``lr: auto`` probes a grid first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from tqdm.auto import tqdm

from fastflux_core.blocks import BlockAdapter, ModelInputs
from fastflux_core.errors import NonFiniteError
from fastflux_core.params import SandwichParams
from fastflux_core.prompts import derive_seed
from fastflux_core.training import BestState, CapturedInputs, KeepBest, Split, accumulated_step, pick_rate, rounds
from torch import nn


def _tensors(x: ModelInputs, per_sample: bool = False) -> list[str]:
    """Names of ``x``'s tensor fields (not the grid, not a missing guidance); ``per_sample``: without
    the token ids, which all samples share."""
    return [f.name for f in fields(x) if isinstance(getattr(x, f.name), torch.Tensor)
            and not (per_sample and f.name in ("img_ids", "txt_ids"))]


def moved(x: ModelInputs, device: torch.device, dtype: torch.dtype) -> ModelInputs:
    """``x`` on ``device``, every floating tensor but guidance in ``dtype``."""
    return replace(x, **{n: getattr(x, n).to(device=device, dtype=None if n == "guidance" else dtype)
                         for n in _tensors(x)})


def take(x: ModelInputs, idx: torch.Tensor) -> ModelInputs:
    """Samples ``idx`` of ``x`` (the token ids are shared by all samples)."""
    return replace(x, **{n: getattr(x, n)[idx] for n in _tensors(x, per_sample=True)})


@dataclass(frozen=True)
class Round:
    """Some training samples' inputs and, for the global objective, the base model's outputs on
    them, on the host (the local objective recomputes the base's block states per micro-batch: at
    FLUX.1-dev's size they are 1.6 GB a sample)."""

    x: ModelInputs  # batch = the round's samples
    y: torch.Tensor | None  # (n, N_img, C_out) float32; None for the local objective

    def __len__(self) -> int:
        return len(self.x.hidden_states)


def teacher_round(teacher: BlockAdapter, inputs: CapturedInputs, idx: torch.Tensor, micro_batch: int,
                  device: torch.device, outputs: bool = True) -> Round:
    """Inputs of samples ``idx`` (read once) and, with ``outputs``, the teacher's outputs, computed on
    ``device``."""
    xs = list(inputs.batches(idx, micro_batch))
    ys = None
    if outputs:
        with torch.no_grad():
            ys = torch.cat([teacher.forward(moved(x, device, teacher.model.dtype)).float().cpu() for x in xs])
    x = replace(xs[0], **{n: torch.cat([getattr(b, n) for b in xs]) for n in _tensors(xs[0], per_sample=True)})
    return Round(x, ys)


def _sq_err(student: BlockAdapter, x: ModelInputs, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = student.forward(moved(x, device, student.model.dtype)).float()  # (b, N_img, C_out)
    return ((out - y.to(device)) ** 2).sum()


def _streams(s) -> tuple[torch.Tensor, torch.Tensor]:
    return s.hidden_states.float(), s.encoder_hidden_states.float()


def teacher_states(teacher: BlockAdapter, x: ModelInputs, device: torch.device) -> list:
    """The base's state before each block and after the last (len = blocks + 1), without gradients."""
    with torch.no_grad():
        states = [teacher.embed(moved(x, device, teacher.model.dtype))]
        for b in range(len(teacher.blocks)):
            states.append(teacher.run(states[-1], b, b + 1))
    return states


def local_err(student: BlockAdapter, states: list) -> torch.Tensor:
    """Σ_b ‖S_b(h_b) − T_b(h_b)‖² over both streams, each student block fed the teacher's state."""
    dtype = student.model.dtype
    total = torch.zeros((), device=states[0].hidden_states.device)
    for b in range(len(student.blocks)):
        h = states[b]
        h = replace(h, **{n: getattr(h, n).to(dtype) for n in ("hidden_states", "encoder_hidden_states", "temb")})
        out = student.run(h, b, b + 1)
        for got, want in zip(_streams(out), _streams(states[b + 1])):
            total = total + ((got - want) ** 2).sum()
    return total


def local_den(states: list) -> torch.Tensor:
    """Σ_b ‖T_b(h_b)‖² over both streams."""
    return sum(sum((t ** 2).sum() for t in _streams(s)) for s in states[1:])


def distill(student: BlockAdapter, teacher: BlockAdapter, train_params: list[nn.Parameter], inputs: CapturedInputs,
            split: Split, steps: int, cfg: SandwichParams, micro_batch: int, lr: float | str, rates: list[float],
            seed: int, device: torch.device, objective: str = "global") -> dict:
    """``steps`` AdamW steps of ``cfg.batch_size`` training samples, in rounds of ``cfg.round_samples``
    whose teacher outputs are computed once (as the sandwich's boundary states); ``micro_batch``-sized
    pieces accumulate the exact batch gradient (the batch's ‖teacher‖² is known first). The same care
    as a sandwich (:mod:`fastflux_core.training`, ``sandwich.eval_every`` / ``patience`` /
    ``probe_steps``): the state kept is the one with the lowest held-out loss, the pruned start
    included; ``lr: auto`` tries each of ``rates`` first. ``objective``: ``global`` or ``local`` (module
    doc). Held-out relative error (of that objective) before and after."""
    local = objective == "local"

    def pieces(r: Round, idx: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(squared error, its denominator) of samples ``idx`` of ``r``, micro-batch by micro-batch."""
        for mb in idx.split(micro_batch):
            if local:
                states = teacher_states(teacher, take(r.x, mb), device)
                yield local_err(student, states), local_den(states)
            else:
                yield _sq_err(student, take(r.x, mb), r.y[mb], device), (r.y[mb] ** 2).sum()

    def error(r: Round) -> tuple[float, float]:
        num = den = 0.0
        with torch.no_grad():
            for n_, d_ in pieces(r, torch.arange(len(r))):
                num, den = num + float(n_), den + float(d_)
        return num, den

    def holdout() -> float:
        num = den = 0.0
        for chunk in split.holdout.split(cfg.round_samples):
            n, d = error(teacher_round(teacher, inputs, chunk, micro_batch, device, not local))
            num, den = num + n, den + d
        return num / max(den, 1e-30)

    pick = torch.randperm(len(split.holdout), generator=torch.Generator().manual_seed(derive_seed(seed, "held-out check")))
    check_round = teacher_round(teacher, inputs, torch.sort(split.holdout[pick[:cfg.round_samples]]).values,
                                micro_batch, device, not local)

    def check() -> float:
        was_training = student.model.training
        student.model.eval()
        num, den = error(check_round)
        student.model.train(was_training)
        return num / max(den, 1e-30)

    def run(opt, r: Round, n_steps: int, gen: torch.Generator, at: int, on_step=lambda step, loss: False) -> None:
        for n in range(n_steps):
            pick = torch.randint(len(r), (min(cfg.batch_size, len(r)),), generator=gen)
            if local:  # the batch's denominator first (one more no-grad pass of the teacher)
                den = sum(local_den(teacher_states(teacher, take(r.x, mb), device)) for mb in pick.split(micro_batch))
            else:
                den = (r.y[pick] ** 2).sum()
            den = den.clamp(min=1e-30).to(device)
            loss = accumulated_step(opt, train_params, (e / den for e, _ in pieces(r, pick)),
                                    f"baseline fine-tuning loss at step {at + n}")
            if on_step(at + n + 1, loss):
                return

    g = torch.Generator().manual_seed(seed)
    before = holdout()
    plan = rounds(split.train, steps, cfg.round_samples, g) if steps else []
    first = teacher_round(teacher, inputs, plan[0][0], micro_batch, device, not local) if plan else None
    start = BestState(train_params, check())
    student.model.train()
    probe = None
    if lr == "auto" and plan:
        def held_out_after(rate: float) -> float:
            start.restore()
            try:
                run(torch.optim.AdamW(train_params, lr=rate, weight_decay=0.0), first, cfg.probe_steps,
                    torch.Generator().manual_seed(derive_seed(seed, "learning-rate probe")), 0)
            except NonFiniteError:
                return math.inf
            return check()

        lr, probe = pick_rate(rates, held_out_after)
        start.restore()
    elif lr == "auto":
        lr = min(rates)
    opt = torch.optim.AdamW(train_params, lr=lr, weight_decay=0.0)
    bar = tqdm(total=steps, desc="baseline fine-tuning", unit="step")
    keep = KeepBest(train_params, start, check, cfg.eval_every, steps, cfg.patience, "distillation loss", bar)
    try:
        for r, (chunk, n_steps) in enumerate(plan):
            r_data = first if r == 0 else teacher_round(teacher, inputs, chunk, micro_batch, device, not local)
            first = None  # round 0's outputs go with the round
            run(opt, r_data, n_steps, g, len(keep.losses), keep)
            if keep.stopped:
                break
    except NonFiniteError as e:  # diverged: the best state so far (the pruned start at worst) is kept
        keep.stopped = f"{e}: training stopped"
    bar.close()
    student.model.eval()
    keep.best.restore()
    after, best_step = holdout(), keep.best.step
    if after > before:  # the checks saw a subset of the held-out samples; on all of them the start wins
        start.restore()
        after, best_step = before, 0
    return {"objective": objective, "holdout_loss_init": before, "holdout_loss_trained": after, "best_step": best_step,
            "steps_run": len(keep.losses), "stopped": keep.stopped, "learning_rate": lr, "learning_rate_probe": probe,
            "holdout_checks": [[s, v] for s, v in keep.when.history],
            "train_loss_first": keep.losses[0] if keep.losses else None,
            "train_loss_last": keep.losses[-1] if keep.losses else None}
