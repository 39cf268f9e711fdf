"""Global distillation: a pruned model trained towards its base model's outputs.

What the paper's L1 baseline is fine-tuned with (:mod:`fastflux_core.width`) and what FastFLUX's
optional finisher does after the chain (:mod:`fastflux_core.finish`): on the training store's
captured transformer inputs (noisy latent, timestep, guidance, prompt), minimise

    L = ‖student(x) − base(x)‖² / ‖base(x)‖²        (the transformer's output, every image token)

in rounds of ``sandwich.round_samples`` samples whose base outputs are computed once, for a given
number of AdamW steps of ``sandwich.batch_size`` samples; ``micro_batch``-sized pieces accumulate the
exact batch gradient (the batch's ‖base(x)‖² is known first). The same care as a sandwich
(:mod:`fastflux_core.selection`): the state kept is the one with the lowest held-out loss — the
student's start included — on the store's held-out prompts, and ``lr: auto`` probes a grid first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from tqdm.auto import tqdm

from fastflux_core.adapter import BlockAdapter, ModelInputs
from fastflux_core.integrity import NonFiniteError, require_finite
from fastflux_core.params import SandwichParams
from fastflux_core.prompts import derive_seed
from fastflux_core.sandwich import CapturedInputs, Split, accumulated_step, rounds
from fastflux_core.selection import BestState, Check, EarlyStop, pick_rate
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
    """Some training samples' inputs and the base model's outputs on them, on the host."""

    x: ModelInputs  # batch = the round's samples
    y: torch.Tensor  # (n, N_img, C_out) float32


def teacher_round(teacher: BlockAdapter, inputs: CapturedInputs, idx: torch.Tensor, micro_batch: int,
                  device: torch.device) -> Round:
    """Inputs of samples ``idx`` (read once) and the teacher's outputs, computed on ``device``."""
    xs = list(inputs.batches(idx, micro_batch))
    with torch.no_grad():
        ys = [teacher.forward(moved(x, device, teacher.model.dtype)).float().cpu() for x in xs]
    x = replace(xs[0], **{n: torch.cat([getattr(b, n) for b in xs]) for n in _tensors(xs[0], per_sample=True)})
    return Round(x, torch.cat(ys))


def _sq_err(student: BlockAdapter, x: ModelInputs, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = student.forward(moved(x, device, student.model.dtype)).float()  # (b, N_img, C_out)
    return ((out - y.to(device)) ** 2).sum()


def distill(student: BlockAdapter, teacher: BlockAdapter, train_params: list[nn.Parameter], inputs: CapturedInputs,
            split: Split, steps: int, cfg: SandwichParams, micro_batch: int, lr: float | str, rates: list[float],
            seed: int, device: torch.device) -> dict:
    """``steps`` AdamW steps of ``cfg.batch_size`` training samples, in rounds of ``cfg.round_samples``
    whose teacher outputs are computed once (as the sandwich's boundary states); ``micro_batch``-sized
    pieces accumulate the exact batch gradient (the batch's ‖teacher‖² is known first). The same care
    as a sandwich (:mod:`fastflux_core.selection`, ``sandwich.eval_every`` / ``patience`` /
    ``probe_steps``): the state kept is the one with the lowest held-out loss, the pruned start
    included; ``lr: auto`` tries each of ``rates`` first. Held-out relative error before and after."""
    def error(r: Round) -> tuple[float, float]:
        num = 0.0
        with torch.no_grad():
            for mb in torch.arange(len(r.y)).split(micro_batch):
                num += float(_sq_err(student, take(r.x, mb), r.y[mb], device))
        return num, float((r.y ** 2).sum())

    def holdout() -> float:
        num = den = 0.0
        for chunk in split.holdout.split(cfg.round_samples):
            n, d = error(teacher_round(teacher, inputs, chunk, micro_batch, device))
            num, den = num + n, den + d
        return num / max(den, 1e-30)

    pick = torch.randperm(len(split.holdout), generator=torch.Generator().manual_seed(derive_seed(seed, "held-out check")))
    check_round = teacher_round(teacher, inputs, torch.sort(split.holdout[pick[:cfg.round_samples]]).values,
                                micro_batch, device)

    def check() -> float:
        was_training = student.model.training
        student.model.eval()
        num, den = error(check_round)
        student.model.train(was_training)
        return num / max(den, 1e-30)

    def run(opt, r: Round, n_steps: int, gen: torch.Generator, at: int, on_step=lambda step, loss: False) -> None:
        for n in range(n_steps):
            pick = torch.randint(len(r.y), (min(cfg.batch_size, len(r.y)),), generator=gen)
            den = (r.y[pick] ** 2).sum().clamp(min=1e-30).to(device)
            loss = accumulated_step(
                opt, train_params, (_sq_err(student, take(r.x, mb), r.y[mb], device) / den for mb in pick.split(micro_batch)),
                f"baseline fine-tuning loss at step {at + n}")
            if on_step(at + n + 1, loss):
                return

    g = torch.Generator().manual_seed(seed)
    before = holdout()
    plan = rounds(split.train, steps, cfg.round_samples, g) if steps else []
    first = teacher_round(teacher, inputs, plan[0][0], micro_batch, device) if plan else None
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
    best, stop, when = BestState(train_params, start.loss), EarlyStop(cfg.patience), Check(cfg.eval_every, steps)
    losses: list[float] = []
    stopped: str | None = None

    def on_step(step: int, loss: float) -> bool:
        nonlocal stopped
        losses.append(loss)
        bar.update(1)
        if not when.due(step):
            return False
        held = check()
        require_finite(torch.tensor(held), f"the held-out distillation loss at step {step}")  # stops training
        when.history.append((step, held))
        best.offer(step, held)
        if stop.update(held):
            stopped = f"held-out loss did not improve for {cfg.patience} checks"
            return True
        return False

    opt = torch.optim.AdamW(train_params, lr=lr, weight_decay=0.0)
    bar = tqdm(total=steps, desc="baseline fine-tuning", unit="step")
    try:
        for r, (chunk, n_steps) in enumerate(plan):
            r_data = first if r == 0 else teacher_round(teacher, inputs, chunk, micro_batch, device)
            first = None  # round 0's outputs go with the round
            run(opt, r_data, n_steps, g, len(losses), on_step)
            if stopped:
                break
    except NonFiniteError as e:  # diverged: the best state so far (the pruned start at worst) is kept
        stopped = f"{e}: training stopped"
    bar.close()
    student.model.eval()
    best.restore()
    after, best_step = holdout(), best.step
    if after > before:  # the checks saw a subset of the held-out samples; on all of them the start wins
        start.restore()
        after, best_step = before, 0
    return {"holdout_loss_init": before, "holdout_loss_trained": after, "best_step": best_step,
            "steps_run": len(losses), "stopped": stopped, "learning_rate": lr, "learning_rate_probe": probe,
            "holdout_checks": [[s, v] for s, v in when.history],
            "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None}
