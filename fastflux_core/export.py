"""The exported pruned transformer: a diffusers model whose config records which blocks are replaced.

``PrunedFluxTransformer2DModel`` is a ``FluxTransformer2DModel`` plus one config entry,
``replaced_blocks`` (global block indices). Its constructor builds FLUX's blocks and swaps each listed
one for a :class:`~fastflux_core.replacement.LinearReplacement`, so ``save_pretrained`` /
``from_pretrained`` round-trip it like any diffusers model (safetensors; a replaced block's
weights are just its linears). LoRA from Sandwich Training is merged into the weights before export,
so the result needs neither peft nor FastFLUX's chain at inference — only this class:

    from diffusers import FluxPipeline
    from fastflux_core.export import PrunedFluxTransformer2DModel
    transformer = PrunedFluxTransformer2DModel.from_pretrained("data/assemble/transformer")
    pipe = FluxPipeline.from_pretrained("/models/FLUX.1-dev", transformer=transformer)

(The class lies in FastFLUX because the replacement keeps the shortcut, y = x + W·x + b, which no
stock diffusers block computes; ReplaceMe-style folding into a neighbour is impossible here.)
"""

from __future__ import annotations

import torch
from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel
from diffusers.configuration_utils import register_to_config

from fastflux_core.adapter import FluxAdapter, SkipBlock
from fastflux_core.replacement import LinearReplacement


class PrunedFluxTransformer2DModel(FluxTransformer2DModel):
    """FluxTransformer2DModel with the blocks in ``replaced_blocks`` replaced by BRLL linears and
    those in ``deleted_blocks`` by the identity (the paper's "direct deletion" comparison)."""

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        replaced_blocks: list[int] | tuple[int, ...] = (),
        deleted_blocks: list[int] | tuple[int, ...] = (),
        weights_dtype: str | None = None,
    ):
        super().__init__(patch_size, in_channels, out_channels, num_layers, num_single_layers, attention_head_dim,
                         num_attention_heads, joint_attention_dim, pooled_projection_dim, guidance_embeds,
                         axes_dims_rope)
        adapter = FluxAdapter(self)
        for i in replaced_blocks:
            adapter.swap(i, LinearReplacement(self.inner_dim, adapter.blocks[i].kind))
        for i in deleted_blocks:
            adapter.swap(i, SkipBlock())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As diffusers', but without a ``dtype`` the model loads in the dtype it was saved in
        (``weights_dtype`` in its config) rather than diffusers' float32 default: a bfloat16 export
        must not silently become a different, float32 model."""
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            config = cls.load_config(pretrained_model_name_or_path, subfolder=kwargs.get("subfolder"))
            if config.get("weights_dtype"):
                kwargs["dtype"] = getattr(torch, config["weights_dtype"])
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


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
