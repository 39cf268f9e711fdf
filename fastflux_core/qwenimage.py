"""The Qwen-Image family (``QwenImageTransformer2DModel``: Qwen-Image) — blocks, forward piece by piece.

A Qwen-Image transformer is ``num_layers`` double-stream blocks (``transformer_blocks``, 60 in
Qwen-Image): image and text each with their own weights and their own AdaLN modulation (``img_mod``,
``txt_mod``), joint attention — FLUX.1's double block, with no single-stream blocks after it. Block
numbering, the kind ``double`` and its BRLL replacement (one linear per stream) are FLUX.1's. What
differs, and lives here:

* **Block call.** The model calls a block by keyword with the text mask, ``temb`` and
  ``modulate_index``: ``(hidden, encoder, encoder_mask, temb, rotary, kwargs, modulate_index)`` →
  ``(encoder, hidden)``. The adapter calls every block — the model's or a stand-in
  (``QwenImageReplacement``, ``QwenImageSkip`` in :mod:`fastflux_core.pruned_flux`) — the same way, so
  the model's own forward and :meth:`QwenImageAdapter.run` see one signature.
* **Text mask.** The pipeline zero-pads each prompt's Qwen2.5-VL states to the longest in the batch and
  passes a mask; the adapter reads it back from the states (:func:`text_mask`: a token is padding when
  its state is exactly zero), ``None`` when nothing is padded, as the pipeline passes it, and the state
  between blocks carries it (``BlockState.text_mask``, the sandwich's boundary too). A folder's encoder
  (:class:`QwenImageTextEncoder`) zero-pads as the pipeline does, so the mask read back is the
  tokenizer's; what the model computes at padded positions is never read, so capture draws no least-
  squares row there and the sandwich's loss leaves them out (:meth:`QwenImageAdapter.call_text_mask`,
  :mod:`fastflux_core.boundary`). The embedded base's MiniLM states are not zero at padding — it is
  trained attending every token, as the FLUX one — so there the mask is always ``None``.
* **Rotary embedding**: complex frequencies for the image grid (frame, rows, columns; ``scale_rope``
  centres them) and for the text tokens after it — ``(img_freqs, txt_freqs)``, from the token grid of
  ``img_ids`` and the number of text tokens (:meth:`QwenImageAdapter.rotary`).
* **Timestep**: sigma in [0, 1] (the pipeline's ``t / 1000``); ``time_text_embed`` scales it by 1000
  itself and reads no pooled text vector (``ModelInputs.pooled_projections`` is not read).
* **Schedule**: ``QwenImagePipeline``'s — sigmas linspace(1, 1/steps), shifted by mu(image tokens)
  from the scheduler's config.

* **A folder** (``model.source: qwenimage``): Qwen2.5-VL through the pipeline's own ``encode_prompt``
  (:class:`QwenImageTextEncoder`), the 3-D ``AutoencoderKLQwenImage`` fed one frame
  (:class:`QwenImageVaeCodec`), true classifier-free guidance with the pipeline's per-token norm
  rescale (``sampling.true_cfg_scale``; :attr:`~fastflux_core.layouts.QwenImageLayout.cfg_renorm`).

Not yet: the editing variants (the folder check and :class:`~fastflux_core.layouts.QwenImageLayout`
refuse them). The memory estimator gives :meth:`QwenImageAdapter.rotary` the grid and takes the mask as
absent (fake tensors have no values to read them from: :mod:`fastflux_core.fake_gpu`).

>>> m = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3,
...                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
...                                 axes_dims_rope=(2, 2, 4))
>>> [b.name for b in QwenImageAdapter(m).blocks]
['d00', 'd01', 'd02']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from torch import nn

from fastflux_core.blocks import BlockState, MlpRef, ModelInputs, OneBlockList, resolution_shift
from fastflux_core.chat_template import IdsOf, TemplatedTokens
from fastflux_core.codec import VaeCodec
from fastflux_core.errors import loading
from fastflux_core.layouts import QwenImageLayout
from fastflux_core.pruned_flux import LinearReplacement, QwenImageReplacement, QwenImageSkip

# LoRA targets of Sandwich Training: attention projections and MLP linears, not the AdaLN modulation.
LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
                "txt_mlp.net.2")
BLOCK_ARGS = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask", "temb", "image_rotary_emb",
              "joint_attention_kwargs", "modulate_index")  # a block's parameters, in order


def text_mask(encoder_hidden_states: torch.Tensor) -> torch.Tensor | None:
    """(B, N_txt) bool, False at padding — a token whose state is exactly zero, as the pipeline pads —
    or None when no token is padding (the pipeline then passes no mask).

    >>> text_mask(torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])).tolist(), text_mask(torch.ones(1, 2, 2))
    ([[True, False]], None)
    """
    mask = encoder_hidden_states.ne(0).any(dim=-1)
    return None if bool(mask.all()) else mask


def token_grid(img_ids: torch.Tensor, grid: tuple[int, int] | None) -> tuple[int, int]:
    """Token grid (rows, columns): half the latent cells of ``grid`` (``ModelInputs.grid``), or else read
    from ``img_ids`` (rows of (0, row, col); a fake tensor has no values to read: the estimator gives ``grid``).

    >>> token_grid(torch.tensor([[0.0, 0, 0], [0, 1, 2]]), None), token_grid(torch.zeros(6, 3), (4, 6))
    ((2, 3), (2, 3))
    """
    if grid is not None:
        return grid[0] // 2, grid[1] // 2
    return int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1


class QwenImageVaeCodec(VaeCodec):
    """Qwen-Image's ``AutoencoderKLQwenImage``, a video VAE (B, C, frames, h, w) that FastFLUX feeds one
    frame: a latent is de-normalised per channel by the config's ``latents_std`` and ``latents_mean``
    and decoded, as ``QwenImagePipeline`` decodes; a latent cell is 2^len(temperal_downsample) pixels
    a side (batching and the uint8 images are :class:`~fastflux_core.codec.VaeCodec`'s)."""

    def __init__(self, vae: AutoencoderKLQwenImage):
        self.vae = vae
        self.latent_channels = vae.config.z_dim
        self.scale_factor = QwenImageLayout.vae_scale_factor(dict(vae.config))

    @torch.no_grad()
    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) model latents → the VAE's (b, C, 1, h, w) on its device: times std plus mean."""
        p = next(self.vae.parameters())
        z = latents.to(p.device, p.dtype)[:, :, None]  # (b, C, 1, h, w): one frame
        mean = torch.tensor(self.vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z)
        std = torch.tensor(self.vae.config.latents_std).view(1, -1, 1, 1, 1).to(z)
        return z * std + mean

    @torch.no_grad()
    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) latents → (b, 3, H, W) images in [-1, 1] on the VAE's device (its one frame)."""
        return self.vae.decode(self.to_vae(latents), return_dict=False)[0][:, :, 0]


def templated_ids(pipe) -> IdsOf:
    """What ``text.max_sequence_length`` counts in Qwen-Image: the tokens of a prompt inside
    ``QwenImagePipeline``'s chat template after its first ``prompt_template_encode_start_idx`` tokens
    (the system turn, which the pipeline drops) — the prompt and the template's closing turn — cut as
    ``encode_prompt`` cuts them."""

    def ids_of(text: str, max_length: int | None) -> list[int]:
        ids = list(pipe.tokenizer(pipe.prompt_template_encode.format(text))["input_ids"])
        ids = ids[pipe.prompt_template_encode_start_idx:]
        return ids[:max_length] if max_length else ids

    return ids_of


class QwenImageTextEncoder:
    """A Qwen-Image folder's Qwen2.5-VL through ``QwenImagePipeline.encode_prompt``: the last hidden
    states after the template's system turn, (B, max_sequence_length, 3584). The pipeline zero-pads
    each prompt to the batch's longest and passes the mask beside; here every batch is zero-padded on
    to ``max_sequence_length`` — the same model inputs, since padding is masked out and adds only
    rotary positions after the prompt's — and the mask is read back from the zeros
    (:func:`text_mask`). No pooled vector (B, 0)."""

    def __init__(self, path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        from diffusers import QwenImagePipeline

        with loading(path):  # only the text half: transformer and VAE stay on disk
            self.pipe = QwenImagePipeline.from_pretrained(str(path), transformer=None, vae=None, dtype=dtype,
                                                          use_safetensors=True).to(device)
        self.max_sequence_length, self.device = max_sequence_length, device
        self.cut_tokenizer = TemplatedTokens(templated_ids(self.pipe), self.pipe.tokenizer)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _mask = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                                max_sequence_length=self.max_sequence_length)  # (B, t ≤ T, D)
        embeds = nn.functional.pad(embeds.float().cpu(), (0, 0, 0, self.max_sequence_length - embeds.shape[1]))
        return embeds, torch.zeros(len(prompts), 0)  # (B, T, D): zeros after each prompt, as the pipeline pads


class QwenImageAdapter(OneBlockList, QwenImageLayout):
    """Block-level access to a diffusers ``QwenImageTransformer2DModel``; what a config alone says:
    :class:`~fastflux_core.layouts.QwenImageLayout`."""

    model_class = QwenImageTransformer2DModel
    vae_class, codec = AutoencoderKLQwenImage, QwenImageVaeCodec
    # the folder's text encoder for the budget: Qwen2.5-VL (its class from its config's architectures),
    # text.max_sequence_length tokens after the template's system turn
    text_encoders = (("text_encoder", None, None),)

    @staticmethod
    def text_encoder(path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        """The folder's Qwen2.5-VL, through its pipeline."""
        return QwenImageTextEncoder(path, max_sequence_length, device, dtype)

    @staticmethod
    def timesteps(scheduler: FlowMatchEulerDiscreteScheduler, steps: int, image_seq_len: int,
                  device: torch.device) -> torch.Tensor:
        """``QwenImagePipeline``'s schedule: sigmas linspace(1, 1/steps), shifted by mu(image_seq_len)."""
        sigmas = np.linspace(1.0, 1 / steps, steps)
        mu = resolution_shift(scheduler, image_seq_len, max_shift=1.15)
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        return timesteps

    # ------------------------------------------------------------------ blocks

    @property
    def uses_guidance(self) -> bool:
        return False  # no guidance embedding (refused by the layout)

    def replacement(self, index: int, conditioned: bool = False) -> LinearReplacement:
        """A fresh BRLL stand-in for block ``index`` (g = 0, float32) with Qwen-Image's block signature."""
        return QwenImageReplacement(self.model.inner_dim, self.blocks[index].kind, conditioned=conditioned)

    def skip_block(self, index: int) -> nn.Module:
        return QwenImageSkip()

    def lora_targets(self, index: int) -> tuple[str, ...]:
        return LORA_TARGETS

    def mlps(self) -> list[MlpRef]:
        """Every MLP of the blocks still in the model: image (``img_mlp``) and text (``txt_mlp``),
        ``net.0.proj`` → GELU → ``net.2``."""
        out = []
        for ref in self.blocks:
            blk = self.block(ref.index)
            out += [MlpRef(f"{ref.path}.{n}", getattr(blk, n).net[0].proj, getattr(blk, n).net[2], 0)
                    for n in ("img_mlp", "txt_mlp") if getattr(blk, n, None) is not None]
        return out

    temb_module = "time_text_embed"  # what makes the timestep embedding

    @staticmethod
    def call_inputs(args: tuple, kwargs: dict, n_txt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image stream, text stream, temb) of a block call, by keyword (the model's forward, the
        adapter's run) or by position (gradient checkpointing)."""
        named = dict(zip(BLOCK_ARGS, args)) | kwargs
        return named["hidden_states"], named["encoder_hidden_states"], named["temb"]

    @staticmethod
    def call_outputs(output: tuple, n_txt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(text stream, image stream) a block returned."""
        return output

    @staticmethod
    def call_text_mask(args: tuple, kwargs: dict) -> torch.Tensor | None:
        """(B, N_txt) bool of a block call, False at padded text; None when nothing is padded."""
        return (dict(zip(BLOCK_ARGS, args)) | kwargs).get("encoder_hidden_states_mask")

    # ------------------------------------------------------------------ forward, piece by piece

    def embed(self, inputs: ModelInputs) -> BlockState:
        """Everything ``QwenImageTransformer2DModel.forward`` does before its first block."""
        m = self.model
        hidden_states = m.img_in(inputs.hidden_states)  # (B, N_img, D)
        encoder_hidden_states = m.txt_in(m.txt_norm(inputs.encoder_hidden_states))  # (B, N_txt, D)
        temb = m.time_text_embed(inputs.timestep.to(hidden_states.dtype), hidden_states)  # (B, D); scales by 1000
        rotary = self.rotary(inputs.txt_ids, inputs.img_ids, inputs.grid)
        return BlockState(hidden_states, encoder_hidden_states, temb, rotary, text_mask(inputs.encoder_hidden_states))

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor,
               grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(img_freqs (N_img, head_dim / 2), txt_freqs (N_txt, head_dim / 2)), complex: the token grid
        from ``grid`` (latent cells, 2 × 2 a token) or else ``img_ids`` (rows of (0, row, col)), the text
        length from ``txt_ids``."""
        rows, cols = token_grid(img_ids, grid)
        return self.model.pos_embed([(1, rows, cols)], max_txt_seq_len=txt_ids.shape[0], device=img_ids.device)


    def run_modules(self, modules: list[nn.Module], state: BlockState, start: int = 0) -> BlockState:
        """Run block modules in order on ``state`` as blocks ``start, start + 1, …``, each with the
        arguments the model's forward passes (through its ``_gradient_checkpointing_func`` when
        enabled on the model and gradients are on)."""
        model = self.model
        checkpoint = torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False)
        for block in modules:
            args = (state.hidden_states, state.encoder_hidden_states, state.text_mask, state.temb,
                    state.image_rotary_emb, None, None)
            if checkpoint:
                encoder_hidden_states, hidden_states = model._gradient_checkpointing_func(block, *args)
            else:
                encoder_hidden_states, hidden_states = block(**dict(zip(BLOCK_ARGS, args)))
            state = state.with_streams(encoder_hidden_states, hidden_states)
        return state

    def head(self, state: BlockState) -> torch.Tensor:
        """Final modulated norm and projection → (B, N_img, C_tok), FLUX's packed channel order."""
        return self.model.proj_out(self.model.norm_out(state.hidden_states, state.temb))

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """embed → all blocks → head; equals the model's own forward."""
        return self.head(self.run(self.embed(inputs)))

    def call(self, x: ModelInputs) -> torch.Tensor:
        """The model's own forward, as ``QwenImagePipeline`` calls it: (B, N_img, C_tok) → velocity."""
        rows, cols = token_grid(x.img_ids, x.grid)
        return self.model(hidden_states=x.hidden_states, encoder_hidden_states=x.encoder_hidden_states,
                          encoder_hidden_states_mask=text_mask(x.encoder_hidden_states), timestep=x.timestep,
                          img_shapes=[[(1, rows, cols)]] * x.hidden_states.shape[0], return_dict=False)[0]
