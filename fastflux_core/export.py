"""The exported pruned model: the in-memory chain model → a savable pruned transformer.

The transformer is a :class:`~fastflux_core.pruned_flux.PrunedFluxTransformer2DModel` (a
``FluxTransformer2DModel`` whose config lists ``replaced_blocks``) or its FLUX.2, SD3 or Qwen-Image
counterpart (``PrunedFlux2Transformer2DModel``, ``PrunedSD3Transformer2DModel``,
``PrunedQwenImageTransformer2DModel``) — the family adapter names the class; LoRA from Sandwich Training is
merged into the weights first, so inference needs neither peft nor FastFLUX's chain. Its class ships
inside the folder (``pruned_flux.py``, named in ``auto_map``), and the plain class refuses it.

The pipeline folder around it (stage ``export``) is :mod:`fastflux_core.export_folder`.

(The class exists because the replacement keeps the shortcut, y = x + W·x + b, which no stock
diffusers block computes; ReplaceMe-style folding into a neighbour is impossible here.)
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import init_empty_weights
from torch import nn

from fastflux_core import pruned_flux
from fastflux_core.errors import loading
from fastflux_core.families import adapter_for, family_of_config
from fastflux_core.pruned_flux import (PrunedFlux2Transformer2DModel, PrunedFluxTransformer2DModel, PrunedMixin,
                                       PrunedQwenImageTransformer2DModel, PrunedSD3Transformer2DModel)

__all__ = ["PrunedFluxTransformer2DModel", "PrunedFlux2Transformer2DModel", "PrunedSD3Transformer2DModel",
           "PrunedQwenImageTransformer2DModel", "merge_lora",
           "to_pruned", "count_parameters", "pruned_class", "load_pruned"]


def pruned_class(config: dict) -> type[PrunedMixin]:
    """The pruned class for a transformer config (plain or pruned, any family)."""
    return getattr(pruned_flux, family_of_config(config).pruned_class)


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA adapter into its base weights and remove peft's layers (in place)."""
    if getattr(model, "peft_config", None):
        model.fuse_lora()
        model.unload_lora()


def to_pruned(model: nn.Module, replaced: list[int], deleted: list[int] = (), conditioned: list[int] = ()) -> PrunedMixin:
    """The in-memory chain model (linears swapped in, LoRA merged) as a savable pruned model
    (``conditioned``: the replaced blocks that are timestep-aware). Weights are moved, not copied
    (``assign=True`` into an empty-weight skeleton)."""
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["replaced_blocks"] = sorted(replaced)
    config["deleted_blocks"] = sorted(deleted)
    config["conditioned_blocks"] = sorted(conditioned)
    config["weights_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    with init_empty_weights():
        pruned = getattr(pruned_flux, adapter_for(model).pruned_class).from_config(config)
    pruned.load_state_dict(model.state_dict(), strict=True, assign=True)
    return pruned.eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_pruned(folder: Path) -> PrunedMixin:
    """An assembled pruned transformer (its class from its config: FLUX.1, FLUX.2 or SD3)."""
    with loading(folder):
        cls = pruned_class(json.loads((folder / "config.json").read_text()))
        return cls.from_pretrained(str(folder), use_safetensors=True).eval()
