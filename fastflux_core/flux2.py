"""The FLUX.2 family (``Flux2Transformer2DModel``: FLUX.2-dev, FLUX.2-klein) — blocks, forward piece by piece.

FLUX.2 keeps FLUX.1's block layout — ``num_layers`` double-stream blocks (``transformer_blocks``)
then ``num_single_layers`` single-stream blocks (``single_transformer_blocks``), FLUX.2-dev 8 + 48 —
so block numbering, swapping and the pruned checkpoints' keys are FLUX.1's: :class:`Flux2Adapter`
builds on :class:`~fastflux_core.flux.FluxAdapter` and replaces what differs:

* **Shared modulation.** A FLUX.2 block holds no AdaLN weights. The model computes the timestep
  (+ guidance) embedding ``temb`` (B, D) once, and from it three modulation tensors every block of a
  kind shares: ``double_stream_modulation_img`` / ``_txt`` (B, 6D) and ``single_stream_modulation``
  (B, 3D). The state between blocks stays FastFLUX's :class:`~fastflux_core.blocks.BlockState`
  (``temb`` in it); :meth:`Flux2Adapter.run_modules` computes the three tensors from it once — kept
  while the same state's ``temb`` comes back, as when a range runs in pieces — and hands each block
  its own. Capture, which hooks a block, reads its streams with :meth:`Flux2Adapter.call_inputs` /
  ``call_outputs`` and takes ``temb`` from the model's ``time_guidance_embed``.
* **Block signatures.** A double block takes ``(hidden, encoder, mod_img, mod_txt, rotary)``; a single
  block ``(hidden, encoder, mod, rotary, kwargs, split_hidden_states)``. The model's forward joins the
  streams once before the single blocks; here each single block joins and splits them itself
  (``split_hidden_states=True``) — the same arithmetic, so the streams stay apart in the state and
  any range of blocks, across the double→single boundary too, runs the same way.
* **Stand-ins** (:meth:`Flux2Adapter.replacement`, ``skip_block``: ``Flux2DoubleReplacement`` … in
  :mod:`fastflux_core.pruned_flux`) take both the model's block signatures (its own forward, a
  sampler's call) and FLUX.1's ``(hidden, encoder, temb, rotary)``, which the adapter gives any
  stand-in: y = x + W·x + b needs no modulation. The timestep-aware replacement
  (``solve.condition: temb``) reads ``temb``, which FLUX.2's own forward never hands a block (only
  the modulation tensors): refused.
* **Position ids** have four columns (T, H, W, L): an image token (0, row, column, 0), text token l
  (0, 0, 0, l). :class:`~fastflux_core.blocks.ModelInputs` carries FLUX.1's three-column ids; the
  adapter builds FLUX.2's from them (:func:`flux2_ids`), as ``Flux2Pipeline`` does.
* **No pooled text vector**: ``ModelInputs.pooled_projections`` is not read.
* **Schedule**: ``Flux2Pipeline``'s — sigmas linspace(1, 1/steps) shifted by
  ``compute_empirical_mu(image tokens, steps)``, which depends on the step count.
* **Text** (:class:`Flux2TextEncoder`): the folder's own pipeline class encodes — FLUX.2-dev's
  ``Flux2Pipeline`` (Mistral Small 3.1, hidden states of layers 10, 20 and 30 side by side) or
  ``Flux2KleinPipeline`` (Qwen3, layers 9, 18, 27) — each prompt in its chat template, padded to
  ``text.max_sequence_length`` tokens (which count the template too: :func:`templated_ids` says
  where a prompt is cut); no pooled vector.
* **Latents** (:class:`Flux2VaeCodec`): ``AutoencoderKLFlux2`` has no scaling factor or shift; its
  latents are normalised by the VAE's batch-norm statistics over the 2 × 2-patchified channels — the
  same (c, p, q) channel order as FastFLUX's packed tokens — as ``Flux2Pipeline`` decodes.

Not yet (issue 31): classifier-free guidance (FLUX.2-klein's undistilled base needs it; the
distilled klein and FLUX.2-dev's distilled guidance do not) and the width baseline (FLUX.2's SwiGLU
fuses gate and value in one linear).

>>> m = Flux2Transformer2DModel(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
...                             num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=(4, 4, 4, 4))
>>> [b.name for b in Flux2Adapter(m).blocks]
['d00', 'd01', 's00', 's01']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
from diffusers.models.transformers.transformer_flux2 import Flux2SingleTransformerBlock, Flux2TransformerBlock
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu, retrieve_timesteps
from torch import nn

from fastflux_core.blocks import BlockState, MlpRef, ModelInputs
from fastflux_core.chat_template import IdsOf, TemplatedTokens
from fastflux_core.codec import VaeCodec
from fastflux_core.errors import FastFluxError, loading
from fastflux_core.flux import FluxAdapter
from fastflux_core.layouts import Flux2Layout
from fastflux_core.pruned_flux import (Flux2DoubleReplacement, Flux2DoubleSkip, Flux2SingleReplacement, Flux2SingleSkip,
                                       LinearReplacement)

# LoRA targets of Sandwich Training: attention projections and MLP linears (FLUX.2 blocks hold no
# modulation weights). A single block's QKV and MLP-in are one fused linear, its outputs another.
LORA_TARGETS = {
    "double": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
               "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
               "ff_context.linear_out"),
    "single": ("attn.to_qkv_mlp_proj", "attn.to_out"),
}


def flux2_ids(txt_ids: torch.Tensor, img_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX.2's four-column ids from FLUX.1's three: text token l → (0, 0, 0, l), image token
    (0, row, col) → (0, row, col, 0) (``Flux2Pipeline._prepare_text_ids`` / ``_prepare_latent_ids``).
    Float32 whatever the model's dtype: bfloat16 holds whole numbers exactly only up to 256, and FLUX.2
    numbers its text tokens up to 512 (the pipeline builds them as integers).

    >>> txt, img = flux2_ids(torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [0, 0, 1]]))
    >>> txt.tolist(), img.tolist()
    ([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    """
    n_txt = txt_ids.shape[0]
    txt = torch.zeros(n_txt, 4, dtype=torch.float32, device=txt_ids.device)
    txt[:, 3] = torch.arange(n_txt, device=txt_ids.device)
    img = img_ids[:, :3].float()  # rows and columns: exact in any dtype up to 256 (a 4096-pixel side)
    img = torch.cat((img, torch.zeros_like(img[:, :1])), dim=1)
    return txt, img  # (N_txt, 4), (N_img, 4)


class Flux2VaeCodec(VaeCodec):
    """FLUX.2's ``AutoencoderKLFlux2``: a latent is de-normalised by the VAE's batch-norm statistics over
    its 2 × 2-patchified channels before decoding, as ``Flux2Pipeline`` decodes (FLUX.1's scale and
    shift do not apply; batching and the uint8 images are :class:`~fastflux_core.codec.VaeCodec`'s)."""

    @torch.no_grad()
    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) model latents → the VAE's (b, C, h, w) latents, on the VAE's device: each
        2 × 2-patchified channel times its batch-norm std plus its mean (``Flux2Pipeline``'s decode)."""
        from diffusers import Flux2Pipeline

        p = next(self.vae.parameters())
        z = Flux2Pipeline._patchify_latents(latents.to(p.device, p.dtype))  # (b, 4C, h/2, w/2)
        bn = self.vae.bn
        z = z * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(z.dtype) \
            + bn.running_mean.view(1, -1, 1, 1).to(z.dtype)
        return Flux2Pipeline._unpatchify_latents(z)

    @torch.no_grad()
    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) latents → (b, 3, H, W) images in [-1, 1] on the VAE's device."""
        return self.vae.decode(self.to_vae(latents), return_dict=False)[0]


def templated_ids(pipe) -> IdsOf:
    """The pipeline's tokens of a prompt in its chat template, truncated as it truncates: FLUX.2-dev's
    Mistral Small 3.1 after its long system message (``_get_mistral_3_small_prompt_embeds``), klein's
    Qwen3 as the user turn with the generation prompt."""
    tok = pipe.tokenizer

    def ids_of(text: str, max_length: int | None) -> list[int]:
        cut = {"truncation": True, "max_length": max_length} if max_length else {}
        if type(pipe).__name__ == "Flux2Pipeline":
            from diffusers.pipelines.flux2.pipeline_flux2 import format_input

            return list(tok.apply_chat_template(format_input(prompts=[text]), add_generation_prompt=False,
                                                tokenize=True, return_dict=True, **cut)["input_ids"][0])
        templated = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True, enable_thinking=False)
        return list(tok(templated, **cut)["input_ids"])

    return ids_of


class Flux2TextEncoder:
    """A FLUX.2 folder's text encoder through its own pipeline's ``encode_prompt`` (``Flux2Pipeline``:
    Mistral Small 3.1; ``Flux2KleinPipeline``: Qwen3): (B, max_sequence_length, 3 · hidden) token
    states and an empty (B, 0) pooled vector (FLUX.2 reads none)."""

    def __init__(self, path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        from diffusers import DiffusionPipeline

        with loading(path):  # only the text half: transformer and VAE stay on disk
            self.pipe = DiffusionPipeline.from_pretrained(str(path), transformer=None, vae=None, dtype=dtype,
                                                          use_safetensors=True).to(device)
        self.max_sequence_length, self.device = max_sequence_length, device
        self.cut_tokenizer = TemplatedTokens(templated_ids(self.pipe), self.pipe.tokenizer)  # counted in its template

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _text_ids = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                                    max_sequence_length=self.max_sequence_length)
        return embeds.float().cpu(), torch.zeros(len(prompts), 0)


class Flux2Adapter(FluxAdapter, Flux2Layout):
    """Block-level access to a diffusers ``Flux2Transformer2DModel`` (FLUX.2-dev, FLUX.2-klein);
    what a config alone says: :class:`~fastflux_core.layouts.Flux2Layout`."""

    model_class = Flux2Transformer2DModel
    vae_class, codec = AutoencoderKLFlux2, Flux2VaeCodec
    # the folder's text encoder for the budget: its class from its config's architectures (Qwen3ForCausalLM,
    # Mistral3ForConditionalGeneration), text.max_sequence_length tokens (the template included)
    text_encoders = (("text_encoder", None, None),)

    def __init__(self, model: Flux2Transformer2DModel):
        super().__init__(model)
        self._mods_of: torch.Tensor | None = None  # the temb whose modulation tensors _mods holds
        self._mods: dict[str, torch.Tensor] = {}

    @staticmethod
    def text_encoder(path: Path, max_sequence_length: int, device: torch.device, dtype: torch.dtype):
        """The folder's Mistral Small 3.1 (FLUX.2-dev) or Qwen3 (klein), through its pipeline."""
        return Flux2TextEncoder(path, max_sequence_length, device, dtype)

    @staticmethod
    def timesteps(scheduler: FlowMatchEulerDiscreteScheduler, steps: int, image_seq_len: int,
                  device: torch.device) -> torch.Tensor:
        """``Flux2Pipeline``'s schedule: sigmas linspace(1, 1/steps), shifted by the empirical mu of
        (image tokens, steps)."""
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=steps)
        timesteps, _ = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        return timesteps

    def replacement(self, index: int, conditioned: bool = False) -> LinearReplacement:
        """A fresh BRLL stand-in for block ``index`` that FLUX.2's own forward can call (and the adapter:
        FLUX.1's signature too)."""
        if conditioned:
            raise FastFluxError("a FLUX.2 block never receives the timestep embedding a timestep-aware "
                                "replacement reads: set solve.condition: none")
        kind = self.blocks[index].kind
        return (Flux2DoubleReplacement if kind == "double" else Flux2SingleReplacement)(self.model.inner_dim, kind)

    def skip_block(self, index: int) -> nn.Module:
        return Flux2DoubleSkip() if self.blocks[index].kind == "double" else Flux2SingleSkip()

    def mlps(self) -> list[MlpRef]:
        raise FastFluxError("the L1 width baseline cannot prune FLUX.2 yet: its MLPs are SwiGLU with gate and value "
                            "fused in one linear (single blocks: also fused with attention); set baseline.ratios: []")

    # ------------------------------------------------------------------ forward, piece by piece

    def embed(self, inputs: ModelInputs) -> BlockState:
        """Everything ``Flux2Transformer2DModel.forward`` does before its first block but the shared
        modulation (:meth:`run_modules` makes it from ``temb``)."""
        m = self.model
        hidden_states = m.x_embedder(inputs.hidden_states)  # (B, N_img, D)
        timestep = inputs.timestep.to(hidden_states.dtype) * 1000
        guidance = None if inputs.guidance is None else inputs.guidance.to(hidden_states.dtype) * 1000
        temb = m.time_guidance_embed(timestep, guidance)  # (B, D)
        encoder_hidden_states = m.context_embedder(inputs.encoder_hidden_states)  # (B, N_txt, D)
        return BlockState(hidden_states, encoder_hidden_states, temb, self.rotary(inputs.txt_ids, inputs.img_ids))

    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor,
               grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of the joined sequence, text first, each (N_txt + N_img, head_dim), from the ids
        (``grid`` is not needed). The model embeds
        each stream's ids on its own and joins them; the embedding is row by row, so one call on the
        joined ids is the same (and one call is what the budget's memory tracker accepts)."""
        return self.model.pos_embed(torch.cat(flux2_ids(txt_ids, img_ids), dim=0))

    def run_modules(self, modules: list[nn.Module], state: BlockState, start: int = 0) -> BlockState:
        """Run block modules in order on ``state`` as blocks ``start, start + 1, …``: FLUX.2 blocks with
        the shared modulation of ``state.temb``, a stand-in with FLUX.1's signature. Under gradient
        checkpointing (enabled on the model, gradients on) each FLUX.2 block runs through the model's
        ``_gradient_checkpointing_func`` with the arguments its own forward passes."""
        model = self.model
        checkpoint = torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False)
        call = model._gradient_checkpointing_func if checkpoint else (lambda f, *args: f(*args))
        # the modulation of this temb, kept for the next call on the same state's temb (a range run in
        # pieces computes it once, as the model's forward does)
        if self._mods_of is not state.temb:
            self._mods_of, self._mods = state.temb, {}
        mods = self._mods

        def mod(name: str) -> torch.Tensor:  # computed the first time a block of that kind needs it
            if name not in mods:
                mods[name] = getattr(model, name)(state.temb)  # (B, 6D) double, (B, 3D) single
            return mods[name]

        for block in modules:
            hid, enc, rotary = state.hidden_states, state.encoder_hidden_states, state.image_rotary_emb
            if isinstance(block, Flux2TransformerBlock):
                enc, hid = call(block, hid, enc, mod("double_stream_modulation_img"),
                                mod("double_stream_modulation_txt"), rotary, None)
            elif isinstance(block, Flux2SingleTransformerBlock):
                enc, hid = call(block, hid, enc, mod("single_stream_modulation"), rotary, None, True)
            else:  # LinearReplacement, SkipBlock
                enc, hid = block(hid, enc, state.temb, rotary)
            state = state.with_streams(enc, hid)
        return state

    def call(self, x: ModelInputs) -> torch.Tensor:
        """The model's own forward, as ``Flux2Pipeline`` calls it: (B, N_img, C_tok) → velocity, same shape."""
        txt_ids, img_ids = flux2_ids(x.txt_ids, x.img_ids)
        return self.model(hidden_states=x.hidden_states, encoder_hidden_states=x.encoder_hidden_states,
                          timestep=x.timestep, img_ids=img_ids, txt_ids=txt_ids, guidance=x.guidance,
                          return_dict=False)[0]

    def lora_targets(self, index: int) -> tuple[str, ...]:
        return LORA_TARGETS[self.blocks[index].kind]

    temb_module = "time_guidance_embed"

    @staticmethod
    def call_inputs(args: tuple, kwargs: dict, n_txt: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        """(image stream, text stream, None) of a block call: the model's single-block call passes the
        streams joined (text first, ``encoder_hidden_states=None``); no call passes ``temb`` (capture
        takes it from :attr:`temb_module`)."""
        named = dict(zip(("hidden_states", "encoder_hidden_states"), args)) | kwargs
        hidden, encoder = named["hidden_states"], named.get("encoder_hidden_states")
        if encoder is None:
            encoder, hidden = hidden[:, :n_txt], hidden[:, n_txt:]
        return hidden, encoder, None

    @staticmethod
    def call_outputs(output, n_txt: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(text stream, image stream) a block call returned: one joined tensor from the model's
        single-block call, a pair otherwise."""
        if isinstance(output, torch.Tensor):
            return output[:, :n_txt], output[:, n_txt:]
        return output

