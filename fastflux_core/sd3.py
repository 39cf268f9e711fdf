"""The Stable Diffusion 3 family (``SD3Transformer2DModel``: SD3-medium, SD3.5-medium/large).

An SD3 transformer (MMDiT) is ``num_layers`` ``JointTransformerBlock``s, each with image and text
weights of its own and joint attention — FLUX's double block without rotary embeddings. Two
differences matter to pruning:

* The **last block is ``context_pre_only``**: it reads the text stream but outputs none (returns
  ``None`` for it). Its kind is ``final``; its BRLL replacement is one linear on the image stream
  only, and after it the adapter's state carries a zero text stream — nothing reads it, and it adds
  nothing to a sandwich's loss or its normaliser.
* **SD3.5** adds a second self-attention on the image stream in some blocks (``attn2``,
  ``dual_attention_layers``) and RMS q/k norms: the same block kind, with ``attn2``'s projections
  among the LoRA targets.

The model takes spatial latents (B, C, h, w) and patchifies them itself (``pos_embed``, patch 2).
Between stages latents are FLUX-packed tokens (B, h/2 · w/2, 4C) whatever the family (see
:mod:`fastflux_core.blocks`); a 2×2 patch is the same token in both, only its channel order
differs — (c, p, q) packed, (p, q, c) in SD3's output — so :meth:`SD3Adapter.embed` unpacks to the
spatial grid (``ModelInputs.grid``, or read from ``img_ids``) and :meth:`SD3Adapter.head` permutes channels.

Sampling is ``StableDiffusion3Pipeline``'s: the scheduler's own sigmas (static shift, or ``mu`` when
the scheduler shifts dynamically), ``timestep = sigma · 1000``. Not yet here: classifier-free
guidance (the pipeline's default 7.0), which doubles every call with a negative prompt.

>>> from diffusers import SD3Transformer2DModel
>>> m = SD3Transformer2DModel(sample_size=8, in_channels=1, out_channels=1, num_layers=3, attention_head_dim=8,
...                           num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
...                           pooled_projection_dim=16, pos_embed_max_size=8)
>>> [b.name for b in SD3Adapter(m).blocks]
['j00', 'j01', 'f02']
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from torch import nn

from fastflux_core.blocks import (BlockState, MlpRef, ModelInputs, OneBlockList, block_call_inputs,
                                  block_call_outputs, no_text_mask, resolution_shift)
from fastflux_core.codec import VaeCodec, pack, unpack
from fastflux_core.errors import loading
from fastflux_core.layouts import SD3Layout
from fastflux_core.pruned_flux import LinearReplacement, SkipBlock

# LoRA targets of Sandwich Training: attention projections (SD3.5: attn2's too) and MLP linears, not
# the AdaLN modulation; a block has those of them it holds (the final block: no text output projections).
LORA_CANDIDATES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                   "attn.add_v_proj", "attn.to_add_out", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                   "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")


class SD3Adapter(OneBlockList, SD3Layout):
    """Block-level access to a diffusers ``SD3Transformer2DModel``; what a config alone says (names,
    block layout, channels, the embedded config): :class:`~fastflux_core.layouts.SD3Layout`."""

    model_class = SD3Transformer2DModel
    vae_class, codec = AutoencoderKL, VaeCodec  # SD3's VAE scales and shifts latents as FLUX's does
    text_encoders = (("text_encoder", "CLIPTextModelWithProjection", 77),
                     ("text_encoder_2", "CLIPTextModelWithProjection", 77), ("text_encoder_3", "T5EncoderModel", None))

    # ------------------------------------------------------------------ folder components

    @staticmethod
    def timesteps(scheduler: FlowMatchEulerDiscreteScheduler, steps: int, image_seq_len: int,
                  device: torch.device) -> torch.Tensor:
        """``StableDiffusion3Pipeline``'s schedule: the scheduler's sigmas, ``mu`` only when it shifts
        dynamically (SD3's schedulers shift statically, by 3.0)."""
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            kwargs["mu"] = resolution_shift(scheduler, image_seq_len, max_shift=1.16)
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, **kwargs)
        return timesteps

    @staticmethod
    def text_encoder(path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        """CLIP-L + CLIP-G (pooled, and 77 tokens) + T5-XXL of an SD3 pipeline folder."""
        return SD3TextEncoders(path, max_sequence_length, device, dtype)

    # ------------------------------------------------------------------ blocks

    @property
    def uses_guidance(self) -> bool:
        return False

    def replacement(self, index: int, conditioned: bool = False) -> LinearReplacement:
        """A fresh BRLL stand-in for block ``index`` (g = 0, float32): the final block's has no text stream."""
        return LinearReplacement(self.model.inner_dim, self.blocks[index].kind, conditioned=conditioned)

    def skip_block(self, index: int) -> nn.Module:
        return SkipBlock()

    temb_module = "time_text_embed"  # what makes the timestep + pooled text embedding
    call_inputs, call_outputs = staticmethod(block_call_inputs), staticmethod(block_call_outputs)
    call_text_mask = staticmethod(no_text_mask)

    def lora_targets(self, index: int) -> tuple[str, ...]:
        blk = self.block(index)
        names = dict(blk.named_modules())
        return tuple(n for n in LORA_CANDIDATES if names.get(n) is not None)

    def mlps(self) -> list[MlpRef]:
        """Every MLP of the blocks still in the model: image (``ff``) and, but in the final block,
        text (``ff_context``), ``net.0.proj`` → GELU → ``net.2``."""
        out = []
        for ref in self.blocks:
            blk = self.block(ref.index)
            out += [MlpRef(f"{ref.path}.{n}", getattr(blk, n).net[0].proj, getattr(blk, n).net[2], 0)
                    for n in ("ff", "ff_context") if getattr(blk, n, None) is not None]
        return out

    # ------------------------------------------------------------------ forward, piece by piece

    @staticmethod
    def _grid(x: ModelInputs) -> tuple[int, int]:
        """Latent cells (h, w): given, or read from the token grid ``img_ids`` (rows of (0, row, col))."""
        if x.grid is not None:
            return x.grid
        return 2 * (int(x.img_ids[:, 1].max()) + 1), 2 * (int(x.img_ids[:, 2].max()) + 1)

    def embed(self, inputs: ModelInputs) -> BlockState:
        """Everything ``SD3Transformer2DModel.forward`` does before its first block."""
        m = self.model
        latents = unpack(inputs.hidden_states, *self._grid(inputs))  # (B, C, h, w)
        hidden_states = m.pos_embed(latents).contiguous()  # (B, N_img, D), positions included
        temb = m.time_text_embed(inputs.timestep.to(hidden_states.dtype) * 1000, inputs.pooled_projections)
        encoder_hidden_states = m.context_embedder(inputs.encoder_hidden_states)  # (B, N_txt, D)
        return BlockState(hidden_states, encoder_hidden_states, temb, None)

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor, grid: tuple[int, int] | None = None) -> None:
        """SD3 has no rotary embedding (its positions are added in ``pos_embed``)."""
        return None


    def run_modules(self, modules: list[nn.Module], state: BlockState, start: int = 0) -> BlockState:
        """Run block modules as blocks ``start, start + 1, …`` (gradient checkpointing as the model's
        forward does it). After the final block the text stream is zero, whatever stands there."""
        model = self.model
        checkpoint = torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False)
        for j, block in enumerate(modules):
            args = (state.hidden_states, state.encoder_hidden_states, state.temb)
            if checkpoint:
                encoder_hidden_states, hidden_states = model._gradient_checkpointing_func(block, *args, None)
            else:
                encoder_hidden_states, hidden_states = block(*args)
            if self.blocks[start + j].kind == "final":
                encoder_hidden_states = torch.zeros_like(state.encoder_hidden_states)
            state = state.with_streams(encoder_hidden_states, hidden_states)
        return state

    def head(self, state: BlockState) -> torch.Tensor:
        """Final modulated norm and projection → (B, N_img, 4C) packed tokens."""
        x = self.model.proj_out(self.model.norm_out(state.hidden_states, state.temb))  # (B, N, p·p·C), (p, q, c)
        b, n, _ = x.shape
        return x.view(b, n, 2, 2, -1).permute(0, 1, 4, 2, 3).reshape(b, n, -1)  # (c, p, q): FLUX packing

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        return self.head(self.run(self.embed(inputs)))

    def call(self, x: ModelInputs) -> torch.Tensor:
        """The model's own forward, as ``StableDiffusion3Pipeline`` calls it, on packed tokens."""
        latents = unpack(x.hidden_states, *self._grid(x))  # (B, C, h, w)
        out = self.model(hidden_states=latents, timestep=x.timestep * 1000, pooled_projections=x.pooled_projections,
                         encoder_hidden_states=x.encoder_hidden_states, return_dict=False)[0]
        return pack(out)


class SD3TextEncoders:
    """CLIP-L, CLIP-G and T5 of an SD3 folder, through ``StableDiffusion3Pipeline.encode_prompt``."""

    def __init__(self, path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        from diffusers import StableDiffusion3Pipeline

        with loading(path):  # only the text half: transformer and VAE stay on disk
            self.pipe = StableDiffusion3Pipeline.from_pretrained(
                str(path), transformer=None, vae=None, dtype=dtype, use_safetensors=True).to(device)
        self.max_sequence_length, self.device = max_sequence_length, device
        self.cut_tokenizer = self.pipe.tokenizer_3  # T5's (None in a folder without T5: nothing is cut)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length)
        return embeds.float().cpu(), pooled.float().cpu()
