"""Data parallelism across processes that ``accelerate launch`` or ``torchrun`` started (issue 15).

One process per device; every process runs the same stage script. :func:`current_world` joins the
process group through accelerate's ``PartialState`` (NCCL between GPUs, gloo between CPU processes)
when the launcher set ``WORLD_SIZE`` > 1, and is a world of one otherwise — a plain ``python
stages/x.py`` never starts a process group. Work is split by :meth:`World.part`: contiguous,
deterministic slices of the item list, so rank r's items do not depend on timing.

Least squares sums its float64 Gram accumulators across ranks (:func:`sum_accumulator`): each rank
adds its own rows, one all-reduce adds the ranks' sums. The result equals the one-process
accumulator up to the order of float64 additions (relative differences ~1e-15 per addition).

>>> w = World(rank=1, size=3)
>>> list(w.part(10)), w.is_main
([3, 4, 5], False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fastflux_core.lstsq import GramAccumulator


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (a world of one: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items: sizes differ by at most one, earlier ranks
        first, every item in exactly one rank's share."""
        return range(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks, in place (every rank gets the sum)."""
        if self.size > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def end(self) -> None:
        """Wait for every rank, then leave the process group. A process that exits without
        ``destroy_process_group`` can abort at interpreter teardown ("terminate called without an
        active exception", SIGABRT: gloo's threads outlive Python; pytorch/pytorch#190489) — seen
        here once in a 2-process test under load."""
        if self.size > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def current_world(device_type: str = "cpu") -> World:
    """The world the launcher started (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``/``PORT`` set by
    ``accelerate launch`` / ``torchrun``), its process group joined; a world of one without them."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    from accelerate import PartialState

    state = PartialState(cpu=device_type == "cpu")
    return World(state.process_index, state.num_processes)


def sum_accumulator(acc: GramAccumulator, world: World) -> GramAccumulator:
    """Add every rank's Gram matrix, cross term and row count into ``acc`` (on every rank)."""
    world.sum_(acc.gram)
    world.sum_(acc.cross)
    rows = world.sum_(torch.tensor([acc.rows], dtype=torch.float64, device=acc.gram.device))
    acc.rows = int(rows.item())
    return acc
