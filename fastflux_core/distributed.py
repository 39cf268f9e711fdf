"""Data parallelism across processes that ``accelerate launch`` or ``torchrun`` started (issue 15).

One process per device; every process runs the same stage script (``FASTFLUX_LAUNCH`` in dvc.yaml's
commands picks the launcher; unset, a stage is one plain ``python`` process). :func:`current_world`
joins the process group through accelerate's ``PartialState`` (NCCL between GPUs, gloo between CPU
processes) when the launcher set ``WORLD_SIZE`` > 1, and is a world of one otherwise — a plain
``python stages/x.py`` never starts a process group.

Work is split by :meth:`World.part`: contiguous, deterministic slices of the item list in whole
*units* (a sampling batch, so every rank runs the one-process run's batches; for capture also whole
Zarr shards), so rank r's items never depend on timing. Small results travel through
:meth:`World.gather` — safetensors files in a scratch folder under ``.fastflux-tmp/<stage>/``, which
every rank sees because the repository is on one filesystem (multi-node: a shared filesystem) — and
the main rank (0) assembles and writes every output.

Least squares sums its float64 Gram accumulators across ranks (:func:`sum_accumulator`): each rank
adds its own rows, one all-reduce adds the ranks' sums. The result equals the one-process
accumulator up to the order of float64 additions (relative differences ~1e-15 per addition).

>>> w = World(rank=1, size=3)
>>> list(w.part(10)), list(w.part(10, unit=4)), w.is_main
([3, 4, 5], [4, 5, 6, 7], False)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from fastflux_core.errors import FastFluxError
from fastflux_core.io import TMP_ROOT, load_tensors, save_tensors, stage_name
from fastflux_core.lstsq import GramAccumulator
from fastflux_core.preflight import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` processes (a world of one: rank 0 of 1), and the scratch
    folder every rank of this stage shares."""

    rank: int = 0
    size: int = 1
    scratch: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, n: int, unit: int = 1) -> range:
        """This rank's contiguous share of ``n`` items in whole ``unit``-item pieces (the last piece may
        be short): piece counts differ by at most one, earlier ranks first, every item in exactly one
        rank's share. A rank may get nothing when there are fewer pieces than ranks."""
        pieces = -(-n // unit)
        lo, hi = self.rank * pieces // self.size, (self.rank + 1) * pieces // self.size
        return range(min(n, lo * unit), min(n, hi * unit))

    def share(self, items: Sequence[T], unit: int = 1) -> Sequence[T]:
        """This rank's slice of ``items`` (:meth:`part`)."""
        r = self.part(len(items), unit)
        return items[r.start : r.stop]

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all ranks, in place (every rank gets the sum). NCCL reduces GPU tensors only:
        a host tensor (a loss, a count) goes through this rank's GPU and back."""
        if self.size > 1:
            if torch.distributed.get_backend() == "nccl" and t.device.type != "cuda":
                on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
                torch.distributed.all_reduce(on_gpu, op=torch.distributed.ReduceOp.SUM)
                t.copy_(on_gpu)
            else:
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def gather(self, tensors: dict[str, torch.Tensor], tag: str) -> dict[str, torch.Tensor] | None:
        """Every rank's ``tensors`` concatenated along dim 0 in rank order — on the main rank; ``None``
        on the others. A rank with nothing to give passes ``{}``. Each rank writes its part as ``<scratch>/<tag>-<rank>.safetensors`` (verified
        on reading, like every file FastFLUX writes): images and latents of a large share go through
        the filesystem, not through a collective that would hold them all in one message."""
        if self.size == 1:
            return tensors
        assert self.scratch is not None, "a world of several ranks has a scratch folder"
        save_tensors(self.scratch / f"{tag}-{self.rank}.safetensors", tensors)
        self.barrier()
        if not self.is_main:
            return None
        parts = [load_tensors(self.scratch / f"{tag}-{r}.safetensors") for r in range(self.size)]
        keys = next((list(p) for p in parts if p), [])
        return {k: torch.cat([p[k] for p in parts if p]) for k in keys}

    def end(self) -> None:
        """Wait for every rank, then leave the process group (:func:`leave_group`)."""
        if self.size > 1:
            leave_group()


def leave_group() -> None:
    """Wait for every rank, then leave the process group, if there is one. A process that exits
    without ``destroy_process_group`` can abort at interpreter teardown ("terminate called without an
    active exception", SIGABRT: gloo's threads outlive Python; pytorch/pytorch#190489) — seen here
    once in a 2-process test under load. :func:`fastflux_core.io.run_stage` calls it after a stage."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


_joined: World | None = None  # the world this process joined (a process joins once)


def current_world(device: str = "cpu", follow: bool = False) -> World:
    """The world the launcher started (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``/``PORT`` set by
    ``accelerate launch`` / ``torchrun``), its process group joined and every rank past rank 0's
    start-up; a world of one without them. ``device`` is ``model.device``: CPU processes talk gloo,
    GPU processes NCCL, each on the GPU of its ``LOCAL_RANK``.

    Rank 0 tells every rank which stage it runs (its command line): a rank running another stage — a
    node started out of step — stops with one line, and a ``follow`` rank (:mod:`fastflux_core.follow`,
    the other nodes of a multi-node run) takes it as its own."""
    global _joined
    if _joined is not None:
        return _joined
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    from accelerate import PartialState

    state = PartialState(cpu=resolve_device(device).type == "cpu")
    own = [Path(sys.argv[0]).as_posix(), *sys.argv[1:]]
    command = [own]
    torch.distributed.broadcast_object_list(command, src=0)  # every rank now holds rank 0's
    if follow:
        sys.argv = list(command[0])
    elif command[0] != own:
        raise FastFluxError(f"rank {state.process_index} runs {' '.join(sys.argv)} but rank 0 runs "
                            f"{' '.join(command[0])}: every node must run the same stage (README: many machines)")
    world = World(state.process_index, state.num_processes, Path(TMP_ROOT / stage_name() / "exchange").absolute())
    if world.is_main:
        world.scratch.mkdir(parents=True, exist_ok=True)
    world.barrier()
    _joined = world
    return world


def sum_accumulator(acc: GramAccumulator, world: World) -> GramAccumulator:
    """Add every rank's Gram matrix, cross term and row count into ``acc`` (on every rank)."""
    world.sum_(acc.gram)
    world.sum_(acc.cross)
    rows = world.sum_(torch.tensor([acc.rows], dtype=torch.float64, device=acc.gram.device))
    acc.rows = int(rows.item())
    return acc
