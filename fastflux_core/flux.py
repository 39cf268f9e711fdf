"""The FLUX family (``FluxTransformer2DModel``: FLUX.1-dev, FLUX.1-schnell, the embedded default).

A FLUX transformer is ``num_layers`` double-stream blocks (``transformer_blocks``: image and text
each with their own weights, joint attention) then ``num_single_layers`` single-stream blocks
(``single_transformer_blocks``: one set of weights over the joined sequence). Since diffusers 0.35
both kinds take ``(hidden_states, encoder_hidden_states, temb, image_rotary_emb)`` and return
``(encoder_hidden_states, hidden_states)``, so any contiguous range of blocks, including one that
crosses the double→single boundary, runs the same way, and any module with that signature can stand
in for a block (:meth:`FluxAdapter.swap`). Swaps edit the model's own ``ModuleList``s, so the
model's ``forward`` — and ``save_pretrained`` of a pruned model — see them too.

Everything FastFLUX knows about FLUX that is not in diffusers is in this module; the other stages
reach it through :class:`~fastflux_core.blocks.BlockAdapter`.

>>> from diffusers import FluxTransformer2DModel
>>> m = FluxTransformer2DModel(in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
...                            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
...                            axes_dims_rope=(2, 2, 4))
>>> [b.name for b in FluxAdapter(m).blocks]
['d00', 'd01', 's00', 's01']
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from torch import nn

from fastflux_core.blocks import (BlockRef, BlockState, MlpRef, ModelInputs, block_call_inputs, block_call_outputs,
                                  resolution_shift)
from fastflux_core.codec import VaeCodec
from fastflux_core.errors import loading
from fastflux_core.pruned_flux import LinearReplacement, SkipBlock

if TYPE_CHECKING:
    from fastflux_core.params import EmbeddedParams

# FLUX.1-dev's published component configs (``config.json`` of each sub-folder of
# black-forest-labs/FLUX.1-dev), for what needs the shapes without the 33 GB of weights: the budget
# command (:mod:`fastflux_core.budget`) when no FLUX folder is at hand, and the FLUX-width test folder
# (``scripts/make_flux_width_folder.py``). Nothing here is downloaded; a real folder's own configs
# always win when ``model.path`` exists.
FLUX1_DEV_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

FLUX1_DEV_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

FLUX1_DEV_CLIP_TEXT = {  # text_encoder: CLIP ViT-L/14 text tower
    "architectures": ["CLIPTextModel"],
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}

FLUX1_DEV_T5_ENCODER = {  # text_encoder_2: T5 v1.1 XXL encoder
    "architectures": ["T5EncoderModel"],
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "dense_act_fn": "gelu_new",
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "vocab_size": 32128,
}

FLUX1_DEV_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

# LoRA targets of Sandwich Training: attention projections and MLP linears, not the AdaLN modulation.
LORA_TARGETS = {
    "double": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
               "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
               "ff_context.net.2"),
    "single": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"),
}


class FluxAdapter:
    """Block-level access to a diffusers ``FluxTransformer2DModel`` (any size, FLUX.1-dev included)."""

    family = "flux"
    model_class = FluxTransformer2DModel
    pipeline_class = "FluxPipeline"
    pruned_class = "PrunedFluxTransformer2DModel"
    vae_class, codec = AutoencoderKL, VaeCodec  # the folder's VAE, and how latents are scaled for it
    # the folder's text encoders: (sub-folder, transformers class, tokens; None: text.max_sequence_length)
    text_encoders = (("text_encoder", "CLIPTextModel", 77), ("text_encoder_2", "T5EncoderModel", None))
    # FLUX.1-dev's published component configs: the budget of a run whose folder is not there yet
    reference_configs = {"transformer": FLUX1_DEV_TRANSFORMER, "vae": FLUX1_DEV_VAE,
                         "scheduler": FLUX1_DEV_SCHEDULER, "text_encoder": FLUX1_DEV_CLIP_TEXT,
                         "text_encoder_2": FLUX1_DEV_T5_ENCODER}

    def __init__(self, model: FluxTransformer2DModel):
        self.model = model
        n_double = len(model.transformer_blocks)
        n_single = len(model.single_transformer_blocks)
        self.blocks: list[BlockRef] = [
            BlockRef(i, "double", f"transformer_blocks.{i}") for i in range(n_double)
        ] + [BlockRef(n_double + j, "single", f"single_transformer_blocks.{j}") for j in range(n_single)]

    def __len__(self) -> int:
        return len(self.blocks)

    # ------------------------------------------------------------------ from a config alone

    @staticmethod
    def token_channels(config: dict) -> int:
        """Values per packed latent token (C_tok = 4C): the model reads tokens as they are."""
        return config["in_channels"]

    @staticmethod
    def latent_channels(config: dict) -> int:
        return config["in_channels"] // 4

    @staticmethod
    def embedded_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
        """The ``FluxTransformer2DModel`` arguments of the embedded base (``embedded.flux``)."""
        return {"patch_size": 1, "in_channels": 4 * latent_channels, "num_layers": cfg.flux.num_layers,
                "num_single_layers": cfg.flux.num_single_layers, "attention_head_dim": cfg.attention_head_dim,
                "num_attention_heads": cfg.num_attention_heads, "joint_attention_dim": text_dims[0],
                "pooled_projection_dim": text_dims[1], "guidance_embeds": False,
                "axes_dims_rope": cfg.flux.axes_dims_rope}

    @staticmethod
    def timesteps(scheduler: FlowMatchEulerDiscreteScheduler, steps: int, image_seq_len: int,
                  device: torch.device) -> torch.Tensor:
        """``FluxPipeline``'s schedule: sigmas linspace(1, 1/steps), shifted by mu(image_seq_len)."""
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        mu = resolution_shift(scheduler, image_seq_len, max_shift=1.15)
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        return timesteps

    @staticmethod
    def text_encoder(path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        """CLIP-L (pooled) + T5-XXL (tokens) of a FLUX pipeline folder."""
        return FluxTextEncoders(path, max_sequence_length, device, dtype)

    @staticmethod
    def text_tokens(max_sequence_length: int) -> int:
        """Text tokens per prompt of the folder's own encoders: T5's, ``max_sequence_length``."""
        return max_sequence_length

    # ------------------------------------------------------------------ blocks

    @property
    def uses_guidance(self) -> bool:
        """FLUX.1-dev's distilled guidance is a model input (``guidance_embeds``)."""
        return bool(self.model.config.guidance_embeds)

    def _slot(self, index: int) -> tuple[nn.ModuleList, int]:
        if not 0 <= index < len(self.blocks):
            raise IndexError(f"block index {index} out of range 0..{len(self.blocks) - 1}")
        ref = self.blocks[index]
        attr, pos = ref.path.rsplit(".", 1)
        return getattr(self.model, attr), int(pos)

    def block(self, index: int) -> nn.Module:
        """The module currently at block ``index`` (the original block or whatever was swapped in)."""
        modules, pos = self._slot(index)
        return modules[pos]

    def swap(self, index: int, module: nn.Module) -> nn.Module:
        """Put ``module`` at block ``index``; return the module that was there."""
        modules, pos = self._slot(index)
        old = modules[pos]
        modules[pos] = module
        return old

    def replacement(self, index: int, conditioned: bool = False) -> LinearReplacement:
        """A fresh BRLL stand-in for block ``index`` (g = 0, float32), of its kind; ``conditioned``:
        timestep-aware."""
        return LinearReplacement(self.model.inner_dim, self.blocks[index].kind, conditioned=conditioned)

    def skip_block(self, index: int) -> nn.Module:
        """The identity stand-in for block ``index``."""
        return SkipBlock()

    def skip(self, index: int) -> nn.Module:
        """Replace block ``index`` by the identity; return the removed block (swap it back to undo)."""
        return self.swap(index, self.skip_block(index))

    def lora_targets(self, index: int) -> tuple[str, ...]:
        return LORA_TARGETS[self.blocks[index].kind]

    temb_module = "time_text_embed"  # what makes the timestep (+ guidance, pooled text) embedding
    call_inputs, call_outputs = staticmethod(block_call_inputs), staticmethod(block_call_outputs)

    def mlps(self) -> list[MlpRef]:
        """Every MLP of the blocks still in the model: a double block's image (``ff``) and text
        (``ff_context``) MLPs, ``net.0.proj`` → GELU → ``net.2``; a single block's ``proj_mlp`` → GELU →
        the MLP half of ``proj_out``, whose input is ``cat([attention (D), mlp (H)])``."""
        out = []
        for ref in self.blocks:
            blk = self.block(ref.index)
            if ref.kind == "double" and hasattr(blk, "ff"):
                out += [MlpRef(f"{ref.path}.{n}", getattr(blk, n).net[0].proj, getattr(blk, n).net[2], 0)
                        for n in ("ff", "ff_context")]
            elif ref.kind == "single" and hasattr(blk, "proj_mlp"):
                out.append(MlpRef(ref.path, blk.proj_mlp, blk.proj_out, blk.proj_out.in_features - blk.proj_mlp.out_features))
        return out

    # ------------------------------------------------------------------ forward, piece by piece

    def embed(self, inputs: ModelInputs) -> BlockState:
        """Everything ``FluxTransformer2DModel.forward`` does before its first block."""
        m = self.model
        hidden_states = m.x_embedder(inputs.hidden_states)  # (B, N_img, D)
        timestep = inputs.timestep.to(hidden_states.dtype) * 1000
        if inputs.guidance is None:
            temb = m.time_text_embed(timestep, inputs.pooled_projections)  # (B, D)
        else:
            guidance = inputs.guidance.to(hidden_states.dtype) * 1000
            temb = m.time_text_embed(timestep, guidance, inputs.pooled_projections)
        encoder_hidden_states = m.context_embedder(inputs.encoder_hidden_states)  # (B, N_txt, D)
        return BlockState(hidden_states, encoder_hidden_states, temb, self.rotary(inputs.txt_ids, inputs.img_ids))

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary embedding of the joined sequence (cos, sin), each (N_txt + N_img, head_dim)."""
        return self.model.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

    def run(self, state: BlockState, start: int = 0, stop: int | None = None) -> BlockState:
        """Run blocks ``start .. stop-1`` (global indices, any kinds) on ``state``."""
        stop = len(self.blocks) if stop is None else stop
        if not 0 <= start <= stop <= len(self.blocks):
            raise IndexError(f"block range [{start}, {stop}) not within [0, {len(self.blocks)}]")
        return self.run_modules([self.block(i) for i in range(start, stop)], state, start)

    def run_modules(self, modules: list[nn.Module], state: BlockState, start: int = 0) -> BlockState:
        """Run block modules in order on ``state`` as blocks ``start, start + 1, …``. When gradients are
        on and the model has diffusers' gradient checkpointing enabled, each block runs through the
        model's own ``_gradient_checkpointing_func``, as ``FluxTransformer2DModel.forward`` does: only
        block inputs are kept for backward, one block's activations are recomputed at a time."""
        model = self.model
        checkpoint = torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False)
        for block in modules:
            args = (state.hidden_states, state.encoder_hidden_states, state.temb, state.image_rotary_emb)
            if checkpoint:
                encoder_hidden_states, hidden_states = model._gradient_checkpointing_func(block, *args)
            else:
                encoder_hidden_states, hidden_states = block(*args)
            state = state.with_streams(encoder_hidden_states, hidden_states)
        return state

    def head(self, state: BlockState) -> torch.Tensor:
        """Everything after the last block: final modulated norm and projection → (B, N_img, C_out)."""
        hidden_states = self.model.norm_out(state.hidden_states, state.temb)
        return self.model.proj_out(hidden_states)

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """embed → all blocks → head; equals the model's own forward."""
        return self.head(self.run(self.embed(inputs)))

    def call(self, x: ModelInputs) -> torch.Tensor:
        """The model's own forward, as ``FluxPipeline`` calls it: (B, N_img, C_tok) → velocity, same shape."""
        return self.model(hidden_states=x.hidden_states, timestep=x.timestep, guidance=x.guidance,
                          pooled_projections=x.pooled_projections, encoder_hidden_states=x.encoder_hidden_states,
                          txt_ids=x.txt_ids, img_ids=x.img_ids, return_dict=False)[0]


class FluxTextEncoders:
    """CLIP + T5 from a FLUX.1-dev diffusers folder, through ``FluxPipeline.encode_prompt``."""

    def __init__(self, path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        from diffusers import FluxPipeline

        # Only the text half of the pipeline is loaded; transformer and VAE stay on disk.
        with loading(path):
            self.pipe = FluxPipeline.from_pretrained(
                str(path), transformer=None, vae=None, dtype=dtype, use_safetensors=True
            ).to(device)
        self.max_sequence_length = max_sequence_length
        self.cut_tokenizer = self.pipe.tokenizer_2  # T5's: max_sequence_length counts its tokens
        self.device = device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_embeds, pooled, _text_ids = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return prompt_embeds.float().cpu(), pooled.float().cpu()
