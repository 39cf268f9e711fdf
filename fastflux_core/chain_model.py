"""The chain's model: the base transformer as it stands after a chain state — LoRA on the state's
sandwich neighbours, every replaced block swapped for its linear (:mod:`fastflux_core.chain` holds
the plan and the states themselves, which need no model). Stages capture, sandwich and assemble, the
finisher and the baseline start from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastflux_core.blocks import BlockAdapter
from fastflux_core.chain import ChainState
from fastflux_core.families import adapter_for
from fastflux_core.lora import inject_lora, load_lora
from fastflux_core.prompts import derive_seed
from fastflux_core.pruned_flux import LinearReplacement
from fastflux_core.source import load_transformer

if TYPE_CHECKING:
    from fastflux_core.params import Params


def apply_linears(adapter: BlockAdapter, state: ChainState) -> dict[int, LinearReplacement]:
    """Swap every block the state replaced for a :class:`LinearReplacement` carrying its W, b (a
    deleted block for a :class:`~fastflux_core.pruned_flux.SkipBlock`); return the linears."""
    p = next(adapter.model.parameters())
    out = {}
    for i, streams in state.linears.items():
        if not streams:
            adapter.skip(i)
            continue
        rep = adapter.replacement(i, conditioned=i in state.temb).to(p.device, p.dtype)
        for s, (w, b) in streams.items():
            rep.set_affine(s, w, b)
        for s, weight in state.temb.get(i, {}).items():
            rep.set_conditioning(s, weight)
        adapter.swap(i, rep)
        out[i] = rep
    return out


def build_chain_model(params: "Params", state: ChainState, new_lora: list[int] = ()) -> BlockAdapter:
    """The base model as it stands after ``state``: LoRA on the state's neighbours (plus fresh LoRA on
    ``new_lora``), every replaced block swapped for its linear. Adapters of blocks that were replaced
    later are dropped (see :mod:`fastflux_core.lora`)."""
    adapter = adapter_for(load_transformer(params.model))
    keep = {i: t for i, t in state.lora.items() if i not in state.linears}
    blocks = sorted(set(keep) | set(new_lora))
    inject_lora(adapter, blocks, params.sandwich.lora_rank, params.sandwich.lora_alpha,
                seed=derive_seed(params.seed, "lora-init", state.step))
    load_lora(adapter, keep)
    apply_linears(adapter, state)
    return adapter
