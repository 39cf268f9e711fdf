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
  between blocks carries it (``BlockState.text_mask``, the sandwich's boundary too). The embedded base's
  MiniLM states are not zero at padding — it is trained attending every token, as the FLUX one — so
  there the mask is always ``None``. A Qwen-Image folder's encoder (not yet here) must hand the
  tokenizer's mask explicitly, and capture and the sandwich's loss must then leave padding out.
* **Rotary embedding**: complex frequencies for the image grid (frame, rows, columns; ``scale_rope``
  centres them) and for the text tokens after it — ``(img_freqs, txt_freqs)``, from the token grid of
  ``img_ids`` and the number of text tokens (:meth:`QwenImageAdapter.rotary`).
* **Timestep**: sigma in [0, 1] (the pipeline's ``t / 1000``); ``time_text_embed`` scales it by 1000
  itself and reads no pooled text vector (``ModelInputs.pooled_projections`` is not read).
* **Schedule**: ``QwenImagePipeline``'s — sigmas linspace(1, 1/steps), shifted by mu(image tokens)
  from the scheduler's config.

Not yet (issue 31): a Qwen-Image folder as ``model.source`` — the Qwen2.5-VL text encoder, the
3-D ``AutoencoderKLQwenImage`` codec and true classifier-free guidance —, the memory estimator
(:func:`text_mask` and the rotary grid read tensor values, which fake tensors lack: it refuses in one
line) and the editing variants (:class:`~fastflux_core.layouts.QwenImageLayout` refuses them).

>>> m = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3,
...                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
...                                 axes_dims_rope=(2, 2, 4))
>>> [b.name for b in QwenImageAdapter(m).blocks]
['d00', 'd01', 'd02']
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from torch import nn

from fastflux_core.blocks import BlockState, MlpRef, ModelInputs, OneBlockList, resolution_shift
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


def grid_of(x: ModelInputs) -> tuple[int, int]:
    """Token grid (rows, columns): half the latent cells of ``x.grid``, or read from ``img_ids``."""
    if x.grid is not None:
        return x.grid[0] // 2, x.grid[1] // 2
    return int(x.img_ids[:, 1].max()) + 1, int(x.img_ids[:, 2].max()) + 1


class QwenImageAdapter(OneBlockList, QwenImageLayout):
    """Block-level access to a diffusers ``QwenImageTransformer2DModel``; what a config alone says:
    :class:`~fastflux_core.layouts.QwenImageLayout`."""

    model_class = QwenImageTransformer2DModel

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

    # ------------------------------------------------------------------ forward, piece by piece

    def embed(self, inputs: ModelInputs) -> BlockState:
        """Everything ``QwenImageTransformer2DModel.forward`` does before its first block."""
        m = self.model
        hidden_states = m.img_in(inputs.hidden_states)  # (B, N_img, D)
        encoder_hidden_states = m.txt_in(m.txt_norm(inputs.encoder_hidden_states))  # (B, N_txt, D)
        temb = m.time_text_embed(inputs.timestep.to(hidden_states.dtype), hidden_states)  # (B, D); scales by 1000
        rotary = self.rotary(inputs.txt_ids, inputs.img_ids, grid_of(inputs))
        return BlockState(hidden_states, encoder_hidden_states, temb, rotary, text_mask(inputs.encoder_hidden_states))

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor,
               grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(img_freqs (N_img, head_dim / 2), txt_freqs (N_txt, head_dim / 2)), complex: the token grid
        from ``grid`` or ``img_ids`` (rows of (0, row, col)), the text length from ``txt_ids``."""
        rows, cols = grid or (int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1)
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
        rows, cols = grid_of(x)
        return self.model(hidden_states=x.hidden_states, encoder_hidden_states=x.encoder_hidden_states,
                          encoder_hidden_states_mask=text_mask(x.encoder_hidden_states), timestep=x.timestep,
                          img_shapes=[[(1, rows, cols)]] * x.hidden_states.shape[0], return_dict=False)[0]
