"""How a stage runs: its command-line arguments, its processes, its errors and its timing.

A stage script (``stages/<name>.py``) reads its arguments with :func:`stage_args` / :func:`int_args`,
joins its processes with :func:`current_world` and hands its ``main`` to :func:`run_stage`, which
switches torch to deterministic kernels (so a stage's outputs do depend on this module), turns a
user-fixable error into one line and exit status 2, times the stage and leaves the process group at
the end (:func:`leave_group`).

Data parallelism across processes that ``accelerate launch`` or ``torchrun`` started: one process
per device; every process runs the same stage script (``FASTFLUX_LAUNCH`` in dvc.yaml's
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

Least squares sums its float64 Gram accumulators across ranks (:meth:`World.sum_`, in
:func:`fastflux_core.solve.sum_accumulator`): each rank adds its own rows, one all-reduce adds the
ranks' sums. The result equals the one-process accumulator up to the order of float64 additions
(relative differences ~1e-15 per addition).

>>> w = World(rank=1, size=3)
>>> list(w.part(10)), list(w.part(10, unit=4)), w.is_main
([3, 4, 5], [4, 5, 6, 7], False)
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from fastflux_core.errors import FastFluxError
from fastflux_core.io import TMP_ROOT, clean_tmp, load_tensors, save_tensors, stage_name, write_timing
from fastflux_core.placement import resolve_device

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


def leave_group() -> None:
    """Wait for every rank, then leave the process group, if there is one. A process that exits
    without ``destroy_process_group`` can abort at interpreter teardown ("terminate called without an
    active exception", SIGABRT: gloo's threads outlive Python; pytorch/pytorch#190489) — seen here
    once in a 2-process test under load. :func:`run_stage` calls it after a stage;
    :meth:`World.end` too."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


LAUNCH_EXAMPLES = ("'-m accelerate.commands.launch --multi_gpu --num_processes 8' or "
                   "'-m torch.distributed.run --nproc_per_node 8'")


def check_launcher(value: str | None = None) -> None:
    """``FASTFLUX_LAUNCH`` (``value``; default: the environment's) goes between ``python`` and the
    stage script in dvc.yaml's commands: empty, or ``-m <launcher module> <its options>``. Stage
    validate checks it, so a typo stops ``dvc repro`` with one line naming the variable — not the
    first launched stage with Python's own "can't open file" or "No module named".

    >>> check_launcher(""), check_launcher("-m torch.distributed.run --nproc_per_node 2")
    (None, None)
    """
    value = os.environ.get("FASTFLUX_LAUNCH", "") if value is None else value
    words = value.split()
    if not words:
        return
    if words[0] != "-m" or len(words) < 2:
        raise FastFluxError(f"FASTFLUX_LAUNCH is {value!r}: it goes between python and the stage script, so it must be "
                            f"empty or '-m <launcher module> <its options>', e.g. {LAUNCH_EXAMPLES}")
    try:
        found = importlib.util.find_spec(words[1]) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        found = False
    if not found:
        raise FastFluxError(f"FASTFLUX_LAUNCH names the module {words[1]!r}, which this Python cannot import: "
                            f"use a launcher that is installed, e.g. {LAUNCH_EXAMPLES}")


def stage_args(*names: str) -> list[str]:
    """The stage's command-line arguments (``names`` say what they are), or a usage error."""
    args = sys.argv[1:]
    if len(args) != len(names):
        usage = " ".join(f"<{n}>" for n in names)
        raise FastFluxError(f"usage: python {sys.argv[0]} {usage} (got {len(args)} arguments; "
                            f"dvc.yaml passes them — run it with dvc repro)")
    return args


def int_args(*names: str) -> list[int]:
    """Integer stage arguments (step or block numbers)."""
    args = stage_args(*names)
    bad = [f"{n}={a!r}" for n, a in zip(names, args) if not a.isdigit()]
    if bad:
        raise FastFluxError(f"python {sys.argv[0]}: {', '.join(bad)} must be a non-negative integer")
    return [int(a) for a in args]


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def run_stage(main: Callable[[], None], deterministic: bool = True) -> None:
    """Run a stage's ``main`` deterministically and time it.

    A cause the user can fix — a :class:`FastFluxError`, or a full disk — becomes one line on stderr,
    ``error: …``, and exit status 2; anything else is a bug and keeps its traceback. Leftovers of an
    earlier, killed run of this stage are removed first. The wall time goes to
    ``data/timing/<stage>_wall.json``. ``deterministic=False`` is for stages that run no torch
    kernels (validate, rank, plan, export): switching torch's deterministic mode imports its compiler's config,
    2.5 s of a stage that otherwise takes two.

    Under a launcher (``RANK`` set; the module docstring above) the temporaries are rank 0's to
    remove — before the other ranks can pass the process group's start-up, and after every rank has
    finished — and every rank leaves the process group before it exits."""
    import errno

    main_rank = os.environ.get("RANK", "0") == "0"
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if main_rank:
        clean_tmp()
    t0 = time.perf_counter()
    try:
        main()
        leave_group()
        if main_rank:
            write_timing({"seconds": round(time.perf_counter() - t0, 2)}, f"{stage_name()}_wall")
    except FastFluxError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: disk full while writing {err.filename or 'an output'}: free space and re-run", file=sys.stderr)
        sys.exit(2)
    finally:
        if main_rank:
            clean_tmp()
