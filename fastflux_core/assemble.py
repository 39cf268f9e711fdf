"""Assemble the pruned model at a ratio from the trained chain (paper §3.2 "Inference Reuse").

n = floor(ratio · N) blocks are replaced: the first n of the plan. Their components come from the
chain — with ``sandwich.reuse`` in their latest-trained version, else from the state after step n —
LoRA is merged into the weights, and the model is exported as a
:class:`~fastflux_core.export.PrunedFluxTransformer2DModel` (SD3: ``PrunedSD3Transformer2DModel``).

Ratio → n for FLUX.1-dev's 57 blocks, ours (floor) next to the paper's Table 6:

    ratio   5 %  10 %  15 %  20 %  25 %  30 %
    paper     3     5     8    11    14    16
    ours      2     5     8    11    14    17

The paper's column fits no single rounding rule (5 % → 3 needs rounding up, 30 % → 16 rounding down);
floor never replaces more than the requested share and matches four of six.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from fastflux_core.blocks import BlockAdapter
from fastflux_core.chain import ChainState, state_for_steps
from fastflux_core.chain_model import build_chain_model
from fastflux_core.errors import FastFluxError
from fastflux_core.export import count_parameters, merge_lora, to_pruned
from fastflux_core.params import CaptureParams, ModelParams, Params, PromptParams, n_replaced
from fastflux_core.prompts import read_prompt_file
from fastflux_core.source import empty_base_model, model_root

PAPER_TABLE6 = {0.05: 3, 0.10: 5, 0.15: 8, 0.20: 11, 0.25: 14, 0.30: 16}


def load_states(folder: Path, n_steps: int) -> list[ChainState]:
    """States after steps 0..n_steps (``folder/<k>``)."""
    return [ChainState.load(folder / str(k)) for k in range(n_steps + 1)]


def pruned_model(params: Params, states: list[ChainState], n: int) -> tuple[BlockAdapter, ChainState]:
    """The chain model with n blocks replaced, LoRA merged (in memory)."""
    state = state_for_steps(states, n, params.sandwich.reuse)
    adapter = build_chain_model(params, state)
    merge_lora(adapter.model)
    return adapter, state


Build = Callable[[Params, list[ChainState], int], tuple[BlockAdapter, ChainState, dict | None]]


def unfinished(params: Params, states: list[ChainState], n: int) -> tuple[BlockAdapter, ChainState, None]:
    """:func:`pruned_model` as a :data:`Build`: the chain's model, no finisher record."""
    return (*pruned_model(params, states, n), None)


def assemble(params: Params, states: list[ChainState], n_blocks: int, out: Path, build: Build = unfinished) -> dict:
    """Export the model for ``params.ratio`` to ``out`` (diffusers format); return its record.
    ``build(params, states, n)`` makes the model with n blocks replaced, LoRA merged, and says how it
    was finished (stage assemble passes :func:`fastflux_core.finish.finished_model`)."""
    n = n_replaced(params.ratio, n_blocks)
    if n > len(states) - 1:
        raise FastFluxError(f"ratio={params.ratio} needs {n} trained steps, the chain has {len(states) - 1}: "
                            f"raise max_ratio (and steps) and run dvc repro")
    adapter, state, finished = build(params, states, n)
    deleted = state.deleted()
    pruned = to_pruned(adapter.model, [i for i in sorted(state.linears) if i not in deleted], deleted, sorted(state.temb))
    pruned.save_pretrained(str(out / "transformer"), safe_serialization=True)
    base_params = count_parameters(empty_base_model(params.model))
    blocks = adapter.blocks
    return {
        "ratio": params.ratio, "n_pruned": n, "n_blocks": n_blocks, "reuse": params.sandwich.reuse,
        "chain_step": n, "components_from_step": len(states) - 1 if params.sandwich.reuse else n,
        "replaced_blocks": [{"index": i, "kind": blocks[i].kind, "name": blocks[i].name, "path": blocks[i].path,
                             "replacement": "delete" if i in deleted else ("brll_temb" if i in state.temb else "brll")}
                            for i in sorted(state.linears)],
        "params_base": base_params, "params_pruned": count_parameters(pruned),
        "base": base_identity(params.model), "training_data": training_data(params.prompts, params.capture),
        "finish": finished,
        "family": {"name": adapter.family, "pipeline": pipeline_class(params.model, adapter),
                   "transformer": adapter.model_class.__name__, "pruned": adapter.pruned_class},
        "ratio_to_n_flux57": {f"{r:.2f}": {"paper": PAPER_TABLE6[r], "ours": n_replaced(r, 57)} for r in PAPER_TABLE6},
    }


def pipeline_class(model: ModelParams, adapter: BlockAdapter) -> str:
    """The base folder's pipeline class (its ``model_index.json``: e.g. ``Flux2KleinPipeline`` where the
    family's usual one is ``Flux2Pipeline``), else the family's."""
    index = model_root(model) / "model_index.json"
    return json.loads(index.read_text()).get("_class_name", adapter.pipeline_class) if index.is_file() \
        else adapter.pipeline_class


def base_identity(model: ModelParams) -> dict:
    """Which model was pruned: its source, folder (as configured) and a hash of its transformer config."""
    root = model_root(model)
    config = (root / "transformer" / "config.json").read_bytes()
    return {"source": model.source, "path": str(root), "config_sha256": hashlib.sha256(config).hexdigest()}


def training_data(prompts: PromptParams, capture: CaptureParams) -> dict:
    """How many captured samples fitted the replacements: least squares (calibration set) and
    Sandwich Training (training set, less ``sandwich.holdout`` of its prompts held out to score it)."""
    out = {}
    for name, used_for in (("calibration", "least squares"), ("training", "Sandwich Training and its held-out loss")):
        prompt_set = getattr(prompts, name)
        n_prompts = len(read_prompt_file(prompt_set.file))
        out[name] = {"prompts": n_prompts, "images_per_prompt": prompt_set.images_per_prompt,
                     "timesteps": capture.timesteps,
                     "samples": n_prompts * prompt_set.images_per_prompt * capture.timesteps, "used_for": used_for}
    return out
