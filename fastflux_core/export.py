"""The exported pruned model: the in-memory chain model → a savable ``PrunedFluxTransformer2DModel``.

The transformer is a :class:`~fastflux_core.pruned_flux.PrunedFluxTransformer2DModel` (a
``FluxTransformer2DModel`` whose config lists ``replaced_blocks``); LoRA from Sandwich Training is
merged into the weights first, so inference needs neither peft nor FastFLUX's chain. Its class ships
inside the folder (``pruned_flux.py``, named in ``auto_map``), and the plain class refuses it.

The pipeline folder around it (stage ``export``) is :mod:`fastflux_core.export_folder`.

(The class exists because the replacement keeps the shortcut, y = x + W·x + b, which no stock
diffusers block computes; ReplaceMe-style folding into a neighbour is impossible here.)
"""

from __future__ import annotations

from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel

from fastflux_core.pruned_flux import PrunedFluxTransformer2DModel

__all__ = ["PrunedFluxTransformer2DModel", "merge_lora", "to_pruned", "count_parameters"]


def merge_lora(model: FluxTransformer2DModel) -> None:
    """Fold every LoRA adapter into its base weights and remove peft's layers (in place)."""
    if getattr(model, "peft_config", None):
        model.fuse_lora()
        model.unload_lora()


def to_pruned(model: FluxTransformer2DModel, replaced: list[int], deleted: list[int] = ()
              ) -> PrunedFluxTransformer2DModel:
    """The in-memory chain model (linears swapped in, LoRA merged) as a savable pruned model.
    Weights are moved, not copied (``assign=True`` into an empty-weight skeleton)."""
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["replaced_blocks"] = sorted(replaced)
    config["deleted_blocks"] = sorted(deleted)
    config["weights_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    with init_empty_weights():
        pruned = PrunedFluxTransformer2DModel.from_config(config)
    pruned.load_state_dict(model.state_dict(), strict=True, assign=True)
    return pruned.eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
