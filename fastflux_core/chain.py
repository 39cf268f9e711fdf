"""The progressive pruning chain (paper Algorithm 1, second loop): plan, sandwich bounds, state.

Step k replaces block ``order[k-1]`` of the ranking. The *state* after step k is everything trained
so far — each replaced block's linear and the LoRA adapters on sandwich neighbours — and is what
step k+1 loads before it captures activations ("each step reloads all earlier sandwiches").

Sandwich bounds generalise Eq. 3 to a width of 1 + 2m blocks: with R the replaced set including
the current block i,

    u = the m-th nearest block below i not in R,   d = the m-th nearest block above i not in R

(m = 1 is Eq. 3). If fewer than m unpruned blocks exist on a side (i near the first or last block),
the sandwich stops at the farthest one that exists; if there is none, it runs to the model's first
(last) block, so replaced linears next to i on that side still train with it. Width 1 is block i
alone. Every replaced block in [u, d] is trained jointly; LoRA goes on the unpruned blocks in [u, d].

>>> sandwich_bounds(5, replaced={4, 5, 7}, n_blocks=10, width=3)  # overlap: B4 and B7 already linear
(3, 6)
>>> sandwich_bounds(0, replaced={0}, n_blocks=10, width=3)  # no unpruned block below the first
(0, 1)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastflux_core.blocks import BlockRef
from fastflux_core.errors import FastFluxError, damaged
from fastflux_core.io import load_tensors, read_json, save_tensors, write_json


def sandwich_bounds(i: int, replaced: set[int], n_blocks: int, width: int) -> tuple[int, int]:
    """(u, d): first and last block of block i's sandwich (inclusive); ``replaced`` includes i."""
    m = (width - 1) // 2
    below = [j for j in range(i - 1, -1, -1) if j not in replaced]
    above = [j for j in range(i + 1, n_blocks) if j not in replaced]
    if m == 0:
        return i, i
    u = below[min(m, len(below)) - 1] if below else 0
    d = above[min(m, len(above)) - 1] if above else n_blocks - 1
    return u, d


@dataclass(frozen=True)
class PlanStep:
    """Step k: which block it replaces, what was replaced before, and its sandwich [u, d]."""

    k: int
    block: int
    replaced_before: tuple[int, ...]
    sandwich: tuple[int, int]

    @property
    def replaced(self) -> set[int]:
        return {*self.replaced_before, self.block}

    def lora_blocks(self) -> list[int]:
        """Unpruned blocks inside the sandwich: they get LoRA."""
        u, d = self.sandwich
        return [j for j in range(u, d + 1) if j not in self.replaced]

    def linear_blocks(self) -> list[int]:
        """Replaced blocks inside the sandwich: their linears train jointly."""
        u, d = self.sandwich
        return [j for j in range(u, d + 1) if j in self.replaced]

    def to_json(self) -> dict:
        return {"k": self.k, "block": self.block, "replaced_before": list(self.replaced_before),
                "sandwich": list(self.sandwich), "lora_blocks": self.lora_blocks(),
                "linear_blocks": self.linear_blocks()}

    @classmethod
    def from_json(cls, d: dict) -> "PlanStep":
        return cls(d["k"], d["block"], tuple(d["replaced_before"]), tuple(d["sandwich"]))

    @classmethod
    def load(cls, path: Path) -> "PlanStep":
        if not path.is_file():
            raise FastFluxError(f"plan file missing: {path} (run stage plan)")
        return cls.from_json(read_json(path))  # type: ignore[arg-type]


def make_plan(order: list[int], n_steps: int, n_blocks: int, width: int) -> list[PlanStep]:
    """Steps 1..n_steps from a replacement order."""
    if n_steps > len(order):
        raise FastFluxError(f"the chain needs {n_steps} steps but the ranking orders only {len(order)} blocks")
    steps = []
    for k in range(1, n_steps + 1):
        block = order[k - 1]
        before = tuple(order[: k - 1])
        steps.append(PlanStep(k, block, before, sandwich_bounds(block, {*before, block}, n_blocks, width)))
    return steps


def write_plan(steps: list[PlanStep], blocks: list[BlockRef], out: Path) -> None:
    """One file per step (``<k>.json``), so step k's stages depend only on steps ≤ k of the plan."""
    for s in steps:
        write_json(out / f"{s.k}.json", {**s.to_json(), "name": blocks[s.block].name, "kind": blocks[s.block].kind})


# ----------------------------------------------------------------------------- chain state


@dataclass
class ChainState:
    """Trained components after some step: linears of replaced blocks, LoRA of neighbours.

    ``linears[i][stream] = (weight (D, D), bias (D,))`` — every replaced block has an entry, empty
    for a deleted one (``solve.replacement: delete``: the identity); ``temb[i][stream] = U (D, D)``
    for a timestep-aware replacement (``solve.condition: temb``); ``lora`` maps a block index to
    that block's LoRA tensors (peft's names, relative to the block). Saved as one safetensors file +
    JSON manifest.
    """

    step: int = 0
    kinds: dict[int, str] = field(default_factory=dict)
    linears: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    lora: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    lora_config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per step: what it trained, losses (no timings)
    temb: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for i, streams in self.linears.items():
            for s, (w, b) in streams.items():
                tensors[f"linear.{i}.{s}.weight"], tensors[f"linear.{i}.{s}.bias"] = w, b
        for i, named in self.lora.items():
            for name, t in named.items():
                tensors[f"lora.{i}.{name}"] = t
        for i, streams in self.temb.items():
            for s, u in streams.items():
                tensors[f"temb.{i}.{s}"] = u
        save_tensors(folder / "state.safetensors", tensors)
        write_json(folder / "state.json", {
            "step": self.step, "replaced": sorted(self.linears), "deleted": self.deleted(),
            "kinds": {str(k): v for k, v in self.kinds.items()},
            "lora_blocks": sorted(self.lora), "lora_config": self.lora_config, "history": self.history})

    @classmethod
    def load(cls, folder: Path) -> "ChainState":
        meta_path, data_path = folder / "state.json", folder / "state.safetensors"
        if not meta_path.is_file() or not data_path.is_file():
            raise damaged(folder, "chain state incomplete or missing")
        meta = read_json(meta_path)
        tensors = load_tensors(data_path)
        state = cls(step=meta["step"], kinds={int(k): v for k, v in meta["kinds"].items()},
                    lora_config=meta["lora_config"], history=meta["history"])
        state.linears = {int(i): {} for i in meta.get("deleted", [])}
        for key, t in tensors.items():
            kind, i, rest = key.split(".", 2)
            if kind == "linear":
                stream, part = rest.rsplit(".", 1)
                pair = state.linears.setdefault(int(i), {}).setdefault(stream, [None, None])  # type: ignore[arg-type]
                pair[0 if part == "weight" else 1] = t
            elif kind == "temb":
                state.temb.setdefault(int(i), {})[rest] = t
            else:
                state.lora.setdefault(int(i), {})[rest] = t
        state.linears = {i: {s: (p[0], p[1]) for s, p in d.items()} for i, d in state.linears.items()}
        return state

    def deleted(self) -> list[int]:
        """Replaced blocks with no linear: the identity."""
        return sorted(i for i, streams in self.linears.items() if not streams)

    def describe(self) -> str:
        return json.dumps({"step": self.step, "replaced": sorted(self.linears), "lora_blocks": sorted(self.lora)})


def state_for_steps(states: list[ChainState], n: int, reuse: bool) -> ChainState:
    """The components of the model that replaces the first ``n`` blocks, from a chain trained further.

    ``states[s]`` is the state after step s (``states[0]`` empty). The model at n steps has the
    components of ``states[n]``: the linears of the n replaced blocks and the LoRA adapters present
    after step n. With ``reuse`` (paper §3.2 "Inference Reuse") each of them is taken in its
    latest-trained version — a linear from the last state (later overlapping sandwiches kept training
    it), an adapter from the last state in which its block was still unpruned. Without ``reuse`` it
    is ``states[n]`` itself. No training either way.
    """
    if not 0 <= n < len(states):
        raise FastFluxError(f"the chain has {len(states) - 1} trained steps; a model with {n} replaced blocks needs more")
    base = states[n]
    if not reuse:
        return base
    latest = ChainState(step=n, kinds=dict(base.kinds), lora_config=base.lora_config, history=list(base.history))
    for i in base.linears:
        latest.linears[i] = states[-1].linears[i]
        if i in states[-1].temb:
            latest.temb[i] = states[-1].temb[i]
    for j in base.lora:
        owner = next(s for s in reversed(states) if j in s.lora)
        latest.lora[j] = owner.lora[j]
    latest.history.append({"reuse": True, "from_step": len(states) - 1})
    return latest


def load_solution(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """What stage solve@k wrote (:func:`fastflux_core.solve.save_solution`): stream → (W, b); empty for a
    deleted block."""
    t = load_tensors(path)
    streams = sorted({k.split(".")[0] for k in t})
    return {s: (t[f"{s}.weight"], t[f"{s}.bias"]) for s in streams}


def load_conditioning(path: Path) -> dict[str, torch.Tensor]:
    """Stream → U of a timestep-aware solution; empty for a plain one (or a deleted block)."""
    return {k.split(".")[0]: t for k, t in load_tensors(path).items() if k.endswith(".temb_weight")}
