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

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from torch import nn

from fastflux_core.blocks import (BlockRef, BlockState, MlpRef, ModelInputs, RunsBlockRanges, block_call_inputs,
                                  block_call_outputs, no_text_mask, resolution_shift)
from fastflux_core.codec import VaeCodec
from fastflux_core.errors import loading
from fastflux_core.layouts import FluxLayout
from fastflux_core.pruned_flux import LinearReplacement, SkipBlock

# LoRA targets of Sandwich Training: attention projections and MLP linears, not the AdaLN modulation.
LORA_TARGETS = {
    "double": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
               "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
               "ff_context.net.2"),
    "single": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"),
}


class FluxAdapter(RunsBlockRanges, FluxLayout):
    """Block-level access to a diffusers ``FluxTransformer2DModel`` (any size, FLUX.1-dev included);
    what a config alone says (names, block layout, channels, the embedded config): :class:`FluxLayout`."""

    model_class = FluxTransformer2DModel
    vae_class, codec = AutoencoderKL, VaeCodec  # the folder's VAE, and how latents are scaled for it
    # the folder's text encoders: (sub-folder, transformers class, tokens; None: text.max_sequence_length)
    text_encoders = (("text_encoder", "CLIPTextModel", 77), ("text_encoder_2", "T5EncoderModel", None))

    def __init__(self, model: FluxTransformer2DModel):
        self.model = model
        self.blocks: list[BlockRef] = self.block_refs(dict(model.config))  # as the layout reads the config
        held = len(model.transformer_blocks) + len(model.single_transformer_blocks)
        if len(self.blocks) != held:
            raise ValueError(f"{type(model).__name__}: its config names {len(self.blocks)} blocks, it holds {held}")

    def __len__(self) -> int:
        return len(self.blocks)

    # ------------------------------------------------------------------ folder components

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
    call_text_mask = staticmethod(no_text_mask)

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

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor,
               grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary embedding of the joined sequence (cos, sin), each (N_txt + N_img, head_dim), from
        the ids (``grid`` is not needed: the ids are the positions)."""
        return self.model.pos_embed(torch.cat((txt_ids, img_ids), dim=0))


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
