"""What Sandwich Training, the chain's finisher and the baseline's fine-tuning share: the captured
inputs they train on, the held-out split, rounds and accumulated optimizer steps, and keep-best
selection with the learning-rate probe.

Keep-best training — a repair never leaves the model worse than it found it (beyond the paper):
Sandwich Training starts from a model that is already good — the least-squares linear, fresh LoRA
that changes nothing — and the paper trains for a fixed number of steps at a fixed rate. Measured,
that can end *worse* than the start: at width 1 on the default the held-out local loss went
0.0038 → 0.0041, and on the FLUX-width rehearsal at rate 1e-3 it went 0.0011 → 0.155. So training is
scored on held-out samples every ``eval_every`` steps, and what training returns is the parameters at
the lowest held-out loss seen — the start included (:class:`BestState`); after ``patience`` checks
that do not improve on the best check before them it stops (:class:`EarlyStop`). With ``learning_rate: auto`` a few rates are each
tried for a few steps from the same start on the same batches, and the rate whose try ends lowest
on held-out loss trains (:func:`pick_rate`).

Held-out loss selects the state, so the held-out number of the state kept is an optimistic estimate
of its loss on new data; the evaluation prompts — in no other set — stay the unbiased measure.

>>> w = torch.nn.Parameter(torch.tensor([1.0]))
>>> best = BestState([w], loss=0.5)
>>> with torch.no_grad():
...     _ = w.fill_(2.0)
>>> best.offer(10, 0.9), best.step            # worse than the start: the start stays best
(False, 0)
>>> best.restore(); float(w)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fastflux_core.blocks import ModelInputs
from fastflux_core.errors import FastFluxError, require_finite
from fastflux_core.families import adapter_for
from fastflux_core.prompts import PromptEmbeds, derive_seed
from fastflux_core.stage import World
from fastflux_core.store import StoreReader


class CapturedInputs:
    """The transformer inputs of a training store's samples (noisy latent, timestep, guidance, and the
    prompt's encoded states), as :class:`~fastflux_core.blocks.ModelInputs` on the device."""

    def __init__(self, store: StoreReader, embeds: PromptEmbeds, model: nn.Module, device: torch.device):
        if list(store.attrs["prompts"]) != list(embeds.prompts):
            raise FastFluxError(f"{store.path} was captured from other training prompts than the encoded ones: "
                                f"re-run capture")
        self.store, self.embeds, self.device, self.dtype = store, embeds, device, model.dtype
        self.img_ids = store.read("img_ids").to(device, self.dtype)  # (N_img, 3)
        self.txt_ids = store.read("txt_ids").to(device, self.dtype)  # (N_txt, 3)
        self.guidance = adapter_for(model).uses_guidance
        self.cfg = store.has("negative")  # captured with classifier-free guidance: unconditional twins

    def batches(self, idx: torch.Tensor, micro_batch: int) -> Iterator[ModelInputs]:
        """Samples ``idx`` in store order, ``micro_batch`` at a time; each sample's inputs are read from
        the store once (a round's latents: 32 MB at FLUX.1-dev, 64 samples)."""
        rows = torch.sort(idx).values.numpy()
        names = ("prompt", "latents", "timestep", "guidance") + (("negative",) if self.cfg else ())
        read = {name: self.store.read_samples(name, rows) for name in names}
        for mb in torch.arange(len(rows)).split(micro_batch):  # positions in ``read``
            # an unconditional twin (classifier-free guidance) takes the negative prompt's states
            prompt_embeds, pooled = self.embeds.select(read["prompt"][mb], read["negative"][mb] if self.cfg else False)
            yield ModelInputs(
                hidden_states=read["latents"][mb].to(self.device, self.dtype),
                encoder_hidden_states=prompt_embeds.to(self.device, self.dtype),
                pooled_projections=pooled.to(self.device, self.dtype),
                timestep=read["timestep"][mb].to(self.device, self.dtype),
                img_ids=self.img_ids, txt_ids=self.txt_ids,
                guidance=read["guidance"][mb].to(self.device) if self.guidance else None)


@dataclass(frozen=True)
class Split:
    """Sample indices of the training store: trained on, and held out (whole prompts)."""

    train: torch.Tensor  # (n_train,) sample indices
    holdout: torch.Tensor  # (n_hold,) sample indices
    holdout_prompts: list[str]


def held_out_prompts(n_prompts: int, share: float) -> int:
    """How many of ``n_prompts`` training prompts :func:`holdout_split` holds out: ``round(share ·
    n_prompts)``, at least one (the budget counts the held-out checks with it).

    >>> held_out_prompts(544, 0.1), held_out_prompts(10, 0.01)
    (54, 1)
    """
    return max(1, round(share * n_prompts))


def holdout_split(store: StoreReader, share: float, seed: int) -> Split:
    """Hold out :func:`held_out_prompts` of the store's prompts with all their samples."""
    prompts = store.attrs["prompts"]
    n_hold = held_out_prompts(len(prompts), share)
    if n_hold >= len(prompts):
        raise FastFluxError(f"sandwich.holdout={share} holds out all {len(prompts)} training prompts: lower it or "
                            f"add prompts to {store.attrs['prompt_set']}")
    held = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:n_hold]
    of_sample = store.read("prompt")  # (n,) prompt index per sample
    is_held = torch.isin(of_sample, held)
    return Split(torch.nonzero(~is_held).flatten(), torch.nonzero(is_held).flatten(),
                 [prompts[int(j)] for j in sorted(held.tolist())])


def chain_holdout(store: StoreReader, holdout: float, seed: int) -> Split:
    """The held-out split of every chain step (the same prompts: every training store holds the same
    prompt set), so no step trains on what another step, the finisher or the baseline scores on.
    ``holdout``: sandwich.holdout; ``seed``: the run's seed."""
    return holdout_split(store, holdout, derive_seed(seed, "sandwich-holdout"))


def optimizer(train_params: list[nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
    """AdamW on the fp32 masters (its two moments: 8 bytes per trainable parameter, on the device)."""
    return torch.optim.AdamW(train_params, lr=learning_rate, weight_decay=0.0)


def rounds(train: torch.Tensor, train_steps: int, round_samples: int, g: torch.Generator
           ) -> list[tuple[torch.Tensor, int]]:
    """Shuffled training samples cut into rounds of ≤ ``round_samples``, each with its share of steps.

    >>> [(len(idx), n) for idx, n in rounds(torch.arange(10), 7, 4, torch.Generator().manual_seed(0))]
    [(4, 3), (4, 2), (2, 2)]
    """
    order = train[torch.randperm(len(train), generator=g)]
    chunks = list(order.split(round_samples))
    n = len(chunks)
    return [(c, train_steps // n + (r < train_steps % n)) for r, c in enumerate(chunks)]


def accumulated_step(opt: torch.optim.Optimizer, train_params: list[nn.Parameter], micro_losses: Iterator[torch.Tensor],
                     what: str, world: World = World()) -> float:
    """One optimizer step over a batch given as micro-batch losses (each already divided by the whole
    batch's denominator, so the accumulated gradient is the batch's): backward each as it comes,
    clip the gradient norm to 1, step. Returns the batch loss (summed over ranks). A non-finite batch
    loss or gradient norm raises :class:`~fastflux_core.errors.NonFiniteError` naming ``what``
    before the step, on every rank alike (both are the ranks' common knowledge, so none is left
    waiting in DDP)."""
    opt.zero_grad(set_to_none=True)
    total = torch.zeros(1, dtype=torch.float64)
    for loss in micro_losses:
        loss.backward()
        total += loss.detach().double().cpu()
    if world.size > 1:
        world.sum_(total)
    require_finite(total, what)
    norm = torch.nn.utils.clip_grad_norm_(train_params, 1.0)  # after DDP's all-reduce: the same on every rank
    require_finite(norm.detach().cpu(), f"the gradient of the {what}")  # a finite loss can still overflow backward
    opt.step()
    return float(total)


class BestState:
    """The values of ``params`` at the lowest held-out loss offered so far (ties keep the earlier),
    copied to the host: a fully fine-tuned model's copy would not fit beside it on the device."""

    def __init__(self, params: list[nn.Parameter], loss: float, step: int = 0):
        self.params = params
        self.loss, self.step = (loss if math.isfinite(loss) else math.inf), step  # a NaN start is beaten by any number
        self.values = _host_copy(params)

    def offer(self, step: int, loss: float) -> bool:
        """Record the current values if ``loss`` beats the best so far; True when it did. A
        non-finite loss never does."""
        if not (math.isfinite(loss) and loss < self.loss):
            return False
        self.loss, self.step = loss, step
        self.values = _host_copy(self.params)
        return True

    def restore(self) -> None:
        """Set ``params`` back to the best values."""
        set_values(self.params, self.values)


def _host_copy(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().to("cpu", copy=True) for p in params]


def set_values(params: list[nn.Parameter], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


@dataclass
class EarlyStop:
    """Stop after ``patience`` checks in a row that do not beat the best *check* so far (``None``:
    never stop early). Measured along training, not against the start: a loss still falling towards
    a start it has not yet beaten is improving.

    >>> stop = EarlyStop(2)
    >>> [stop.update(loss) for loss in (0.9, 0.8, 0.85, 0.7, 0.75, 0.71)]
    [False, False, False, False, False, True]
    """

    patience: int | None
    best: float = math.inf
    stale: int = 0

    def update(self, loss: float) -> bool:
        if loss < self.best:
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


@dataclass
class Check:
    """When held-out loss is measured: every ``every`` steps and after the last one.

    >>> [s for s in range(1, 8) if Check(3, 7).due(s)]
    [3, 6, 7]
    """

    every: int
    total: int
    history: list[tuple[int, float]] = field(default_factory=list)

    def due(self, step: int) -> bool:
        return step == self.total or (self.every > 0 and step % self.every == 0)


def pick_rate(rates: Sequence[float], held_out_after: Callable[[float], float]) -> tuple[float, list[dict]]:
    """The rate whose short try ends at the lowest held-out loss (``held_out_after(rate)`` runs the
    try from the same start and returns its loss, ``inf`` for a try that diverged). Ties go to the
    smaller rate; if every try diverged, the smallest rate.

    >>> pick_rate([1e-2, 1e-3, 1e-4], lambda r: {1e-2: math.inf, 1e-3: 0.2, 1e-4: 0.3}[r])[0]
    0.001
    """
    tried = [(float(held_out_after(r)), r) for r in sorted(rates)]
    finite = [(loss, r) for loss, r in tried if math.isfinite(loss)]
    rate = min(finite)[1] if finite else min(rates)
    return rate, [{"rate": r, "holdout_loss": loss if math.isfinite(loss) else None} for loss, r in tried]


class KeepBest:
    """The step callback of keep-best training (sandwiches, distillation): ``keep(step, loss)`` after
    each optimizer step records the batch loss and, when a check is due (:class:`Check`), measures
    held-out loss with ``check()``, offers the state to :class:`BestState` and returns True once
    :class:`EarlyStop` says to stop. A non-finite held-out loss raises
    :class:`~fastflux_core.errors.NonFiniteError` naming ``what``: training stops there and keeps
    the best state so far. ``start`` is the best state to beat (the least-squares or pruned start).

    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> keep = KeepBest([w], BestState([w], 0.5), lambda: float(w), every=1, total=5, patience=2, what="loss")
    >>> for step, value in enumerate((0.4, 0.3, 0.35, 0.36), start=1):
    ...     with torch.no_grad():
    ...         _ = w.fill_(value)
    ...     if keep(step, value):
    ...         break
    >>> keep.best.step, keep.stopped, len(keep.losses)
    (2, 'held-out loss did not improve for 2 checks', 4)
    """

    def __init__(self, params: list[nn.Parameter], start: BestState, check: Callable[[], float], every: int,
                 total: int, patience: int | None, what: str, bar=None):
        self.best, self.stop, self.when = BestState(params, start.loss), EarlyStop(patience), Check(every, total)
        self.check, self.patience, self.what, self.bar = check, patience, what, bar
        self.losses: list[float] = []
        self.stopped: str | None = None

    def __call__(self, step: int, loss: float) -> bool:
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
        if not self.when.due(step):
            return False
        held = self.check()
        require_finite(torch.tensor(held), f"the held-out {self.what} at step {step}")  # stops training
        self.when.history.append((step, held))
        self.best.offer(step, held)
        if self.stop.update(held):
            self.stopped = f"held-out loss did not improve for {self.patience} checks"
            return True
        return False
