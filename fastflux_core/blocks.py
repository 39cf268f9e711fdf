"""Block-level view of a diffusion transformer: the one interface every pruning stage uses.

FastFLUX thinks of a transformer as a chain of N blocks in execution order (FLUX.1-dev: 19
double-stream then 38 single-stream, N = 57; SD3-medium: 24 joint blocks). Between blocks the
model's whole state is a :class:`BlockState`:

    hidden_states          (B, N_img, D)   image stream
    encoder_hidden_states  (B, N_txt, D)   text stream
    temb                   (B, D)          timestep (+ guidance) + pooled-text embedding
    image_rotary_emb       (cos, sin), each (N_txt + N_img, head_dim) — FLUX; None for SD3;
                           Qwen-Image: complex (img_freqs, txt_freqs)
    text_mask              (B, N_txt) bool, False at padded text tokens — Qwen-Image; None elsewhere

Everything family-specific — which modules are blocks, how the model's inputs become the first
state, how a block is called, what follows the last one, which linears LoRA targets, how the
pipeline schedules its timesteps — lives in one module per model family behind
:class:`BlockAdapter`: :mod:`fastflux_core.flux` (``FluxTransformer2DModel``), :mod:`fastflux_core.flux2`
(``Flux2Transformer2DModel``), :mod:`fastflux_core.sd3` (``SD3Transformer2DModel``, SD3 and SD3.5) and
:mod:`fastflux_core.qwenimage` (``QwenImageTransformer2DModel``). Stages only talk to this
interface; :mod:`fastflux_core.families` picks the family: :func:`~fastflux_core.families.adapter_for`
from the model, :func:`~fastflux_core.families.family` from its name. This module is below the
families (they implement it), the registry above them.

Latents travel between stages as FLUX-style packed tokens (B, h/2 · w/2, 4C) whatever the family
(``ModelInputs.hidden_states``): the sampler, the activation stores and the sandwich's inputs are then
one code path; an adapter whose model takes spatial latents (SD3) unpacks them in ``embed``/``call``.

>>> from fastflux_core.families import adapter_for
>>> from diffusers import FluxTransformer2DModel
>>> m = FluxTransformer2DModel(in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
...                            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
...                            axes_dims_rope=(2, 2, 4))
>>> a = adapter_for(m)
>>> [(b.index, b.kind, b.path) for b in a.blocks][1:3]
[(1, 'double', 'transformer_blocks.1'), (2, 'single', 'single_transformer_blocks.0')]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn


# Block kind → the streams its replacement has a linear for (FLUX: double, single; SD3: joint, final —
# SD3's last block outputs no text, so its replacement has none either). pruned_flux.py, shipped with
# every export and importing nothing of ours, holds the same table (tests/test_replacement.py checks it):
# read here, it keeps diffusers out of what stage solve imports.
STREAMS = {"double": ("img", "txt"), "single": ("joint",), "joint": ("img", "txt"), "final": ("img",)}


@dataclass(frozen=True)
class BlockRef:
    """One block: global execution index, kind (a family's block type: ``double``/``single`` in FLUX,
    ``joint``/``final`` in SD3) and dotted module path inside the transformer."""

    index: int
    kind: str
    path: str

    @property
    def name(self) -> str:
        """Short human name used in file names and logs, e.g. ``d03`` or ``s12`` (index within kind)."""
        return f"{self.kind[0]}{int(self.path.rsplit('.', 1)[1]):02d}"


@dataclass(frozen=True)
class BlockState:
    """Everything a block needs; the state between any two consecutive blocks."""

    hidden_states: torch.Tensor  # (B, N_img, D)
    encoder_hidden_states: torch.Tensor  # (B, N_txt, D)
    temb: torch.Tensor  # (B, D)
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin: (N_txt + N_img, head_dim); SD3: None
    text_mask: torch.Tensor | None = None  # (B, N_txt) bool, False at padding: Qwen-Image's; None: no padding

    def with_streams(self, encoder_hidden_states: torch.Tensor, hidden_states: torch.Tensor) -> "BlockState":
        return replace(self, hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states)


@dataclass(frozen=True)
class ModelInputs:
    """One denoising call's inputs, family-neutral (an adapter's ``call`` turns them into the model's)."""

    hidden_states: torch.Tensor  # (B, N_img, C_tok) packed latent tokens (C_tok = 4 · latent channels)
    encoder_hidden_states: torch.Tensor  # (B, N_txt, D_text)
    pooled_projections: torch.Tensor  # (B, D_pool)
    timestep: torch.Tensor  # (B,) sigma in [0, 1] (the FLUX pipeline's t / 1000)
    img_ids: torch.Tensor  # (N_img, 3) token grid positions (0, row, col): FLUX's rotary ids, SD3's grid
    txt_ids: torch.Tensor  # (N_txt, 3)
    guidance: torch.Tensor | None = None  # (B,) or None for models without guidance embedding
    grid: tuple[int, int] | None = None  # latent cells (h, w) when known; else an adapter reads img_ids


@dataclass(frozen=True)
class MlpRef:
    """One MLP of a block, as width pruning sees it: its hidden units are ``up``'s output channels and
    ``down``'s input columns ``offset .. offset + up.out_features``."""

    name: str  # e.g. "transformer_blocks.3.ff"
    up: nn.Linear  # (H, D)
    down: nn.Linear  # (D, offset + H)
    offset: int  # 0, or D where ``down`` also reads the attention output first


class BlockAdapter(Protocol):
    """What stages may use of a model family. Implemented by :class:`fastflux_core.flux.FluxAdapter`
    and :class:`fastflux_core.sd3.SD3Adapter`; a new family (FLUX.2, Qwen-Image) is one more class.

    Class-level, from a config alone (no weights): ``family``, ``model_class``, ``pipeline_class``,
    ``pruned_class`` (names), ``cfg_renorm``, ``token_channels``/``latent_channels``, ``embedded_config`` (the small
    model stage ``base`` trains), ``timesteps`` (the pipeline's schedule), ``text_encoder``."""

    family: str
    model: nn.Module
    blocks: list[BlockRef]
    cfg_renorm: bool  # classifier-free guidance rescaled to the conditional velocity's norm (Qwen-Image)

    @property
    def uses_guidance(self) -> bool: ...
    def block(self, index: int) -> nn.Module: ...
    def swap(self, index: int, module: nn.Module) -> nn.Module: ...
    def skip(self, index: int) -> nn.Module: ...
    def replacement(self, index: int, conditioned: bool = False) -> nn.Module: ...  # a fresh BRLL stand-in
    def skip_block(self, index: int) -> nn.Module: ...  # the identity stand-in
    def embed(self, inputs: ModelInputs) -> BlockState: ...
    # grid: the latent cells (h, w) when known (ModelInputs.grid), for a family that reads no positions from ids
    def rotary(self, txt_ids: torch.Tensor, img_ids: torch.Tensor,
               grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None: ...
    def run(self, state: BlockState, start: int = 0, stop: int | None = None) -> BlockState: ...
    def run_modules(self, modules: list[nn.Module], state: BlockState, start: int) -> BlockState: ...
    def head(self, state: BlockState) -> torch.Tensor: ...
    def call(self, inputs: ModelInputs) -> torch.Tensor: ...
    def lora_targets(self, index: int) -> tuple[str, ...]: ...
    def mlps(self) -> list[MlpRef]: ...
    # capture's view of a block call (the model's own forward or run's): its streams and temb, its outputs;
    # temb_module names the module whose output is temb, for a family whose blocks are not handed it
    temb_module: str
    def call_inputs(self, args: tuple, kwargs: dict, n_txt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...
    def call_outputs(self, output, n_txt: int) -> tuple[torch.Tensor | None, torch.Tensor]: ...
    def call_text_mask(self, args: tuple, kwargs: dict) -> torch.Tensor | None: ...  # (B, N_txt), False at padding


class RunsBlockRanges:
    """``run``: blocks ``start .. stop-1`` of an adapter, through its ``run_modules`` (every family)."""

    def run(self, state: BlockState, start: int = 0, stop: int | None = None) -> BlockState:
        """Run blocks ``start .. stop-1`` (global indices, any kinds) on ``state``."""
        stop = len(self.blocks) if stop is None else stop
        if not 0 <= start <= stop <= len(self.blocks):
            raise IndexError(f"block range [{start}, {stop}) not within [0, {len(self.blocks)}]")
        return self.run_modules([self.block(i) for i in range(start, stop)], state, start)


class OneBlockList(RunsBlockRanges):
    """What an adapter does the same for any model that keeps every block in one ``ModuleList``,
    ``model.transformer_blocks`` (SD3, Qwen-Image): its blocks, as its layout's ``block_refs`` reads the
    model's config (checked against the modules the model holds), and ``block``, ``swap``, ``skip``;
    the adapter gives ``skip_block``."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.blocks: list[BlockRef] = self.block_refs(dict(model.config))
        if len(self.blocks) != len(model.transformer_blocks):
            raise ValueError(f"{type(model).__name__}: its config names {len(self.blocks)} blocks, "
                             f"it holds {len(model.transformer_blocks)}")

    def __len__(self) -> int:
        return len(self.blocks)

    def block(self, index: int) -> nn.Module:
        """The module currently at block ``index`` (the original block or whatever was swapped in)."""
        if not 0 <= index < len(self.blocks):
            raise IndexError(f"block index {index} out of range 0..{len(self.blocks) - 1}")
        return self.model.transformer_blocks[index]

    def swap(self, index: int, module: nn.Module) -> nn.Module:
        """Put ``module`` at block ``index``; return the module that was there."""
        old = self.block(index)
        self.model.transformer_blocks[index] = module
        return old

    def skip(self, index: int) -> nn.Module:
        """Replace block ``index`` by the identity; return the removed block (swap it back to undo)."""
        return self.swap(index, self.skip_block(index))


def block_call_inputs(args: tuple, kwargs: dict, n_txt: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image stream, text stream, temb) of a FLUX.1 or SD3 block call — the model's forward passes
    keywords, an adapter's ``run`` positions (a family whose blocks take other arguments has its own:
    :meth:`~fastflux_core.flux2.Flux2Adapter.call_inputs`).

    >>> block_call_inputs(("img", "txt"), {"temb": "t"})
    ('img', 'txt', 't')
    """
    named = dict(zip(("hidden_states", "encoder_hidden_states", "temb"), args)) | kwargs
    return named["hidden_states"], named["encoder_hidden_states"], named["temb"]


def block_call_outputs(output: tuple, n_txt: int = 0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(text stream, image stream) a FLUX.1 or SD3 block returned (SD3's last block: no text)."""
    return output


def no_text_mask(args: tuple, kwargs: dict) -> None:
    """The text mask of a FLUX.1, FLUX.2 or SD3 block call: none, every text token is attended (a family
    that pads its prompts hands a mask: :meth:`~fastflux_core.qwenimage.QwenImageAdapter.call_text_mask`)."""
    return None


def resolution_shift(scheduler, image_seq_len: int, max_shift: float) -> float:
    """``mu`` of a dynamically shifting flow-matching schedule at ``image_seq_len`` image tokens, from
    the scheduler's config (``max_shift`` where it has none: each pipeline has its own default)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(image_seq_len, scheduler.config.get("base_image_seq_len", 256),
                           scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                           scheduler.config.get("max_shift", max_shift))
