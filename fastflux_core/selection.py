"""Keep-best training: a repair never leaves the model worse than it found it (beyond the paper).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fastflux_core.integrity import require_finite


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
    :class:`~fastflux_core.integrity.NonFiniteError` naming ``what``: training stops there and keeps
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
