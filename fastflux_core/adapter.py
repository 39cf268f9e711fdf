"""Block-level view of a diffusion transformer: the one interface every pruning stage uses.

FastFLUX thinks of FLUX as a chain of N blocks in execution order (FLUX.1-dev: 19 double-stream then
38 single-stream, N = 57). Between blocks the model's whole state is a :class:`BlockState`:

    hidden_states          (B, N_img, D)   image stream
    encoder_hidden_states  (B, N_txt, D)   text stream
    temb                   (B, D)          timestep (+ guidance) + pooled-text embedding
    image_rotary_emb       (cos, sin), each (N_txt + N_img, head_dim)

Since diffusers 0.35 both FLUX block kinds take ``(hidden_states, encoder_hidden_states, temb,
image_rotary_emb, joint_attention_kwargs)`` and return ``(encoder_hidden_states, hidden_states)``, so
any contiguous range of blocks, including one that crosses the double→single boundary, runs the same
way, and any module with that signature can stand in for a block (:meth:`FluxAdapter.swap`). Swaps
edit the model's own ``ModuleList``s, so the model's ``forward`` — and ``save_pretrained`` of a
pruned model — see them too.

Adding another architecture (e.g. SD3's ``SD3Transformer2DModel``) means writing one more class with
:class:`BlockAdapter`'s methods; stages only talk to that interface.

>>> from diffusers import FluxTransformer2DModel
>>> m = FluxTransformer2DModel(in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
...                            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
...                            axes_dims_rope=(2, 2, 4))
>>> a = FluxAdapter(m)
>>> [(b.index, b.kind, b.path) for b in a.blocks][1:3]
[(1, 'double', 'transformer_blocks.1'), (2, 'single', 'single_transformer_blocks.0')]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Protocol

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from fastflux_core.pruned_flux import SkipBlock  # the identity stand-in; ships with exports

BlockKind = Literal["double", "single"]


@dataclass(frozen=True)
class BlockRef:
    """One block: global execution index, kind, and dotted module path inside the transformer."""

    index: int
    kind: BlockKind
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
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor]  # cos, sin: (N_txt + N_img, head_dim)

    def with_streams(self, encoder_hidden_states: torch.Tensor, hidden_states: torch.Tensor) -> "BlockState":
        return replace(self, hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states)


@dataclass(frozen=True)
class ModelInputs:
    """The transformer's own inputs for one denoising call (what the pipeline passes to ``forward``)."""

    hidden_states: torch.Tensor  # (B, N_img, C_in) packed latents
    encoder_hidden_states: torch.Tensor  # (B, N_txt, D_text)
    pooled_projections: torch.Tensor  # (B, D_pool)
    timestep: torch.Tensor  # (B,) sigma in [0, 1] (the pipeline's t / 1000)
    img_ids: torch.Tensor  # (N_img, 3)
    txt_ids: torch.Tensor  # (N_txt, 3)
    guidance: torch.Tensor | None = None  # (B,) or None for models without guidance embedding


@dataclass(frozen=True)
class MlpRef:
    """One MLP of a block, as width pruning sees it: its hidden units are ``up``'s output channels and
    ``down``'s input columns ``offset .. offset + up.out_features``."""

    name: str  # e.g. "transformer_blocks.3.ff"
    up: nn.Linear  # (H, D)
    down: nn.Linear  # (D, offset + H)
    offset: int  # 0, or D where ``down`` also reads the attention output first


class BlockAdapter(Protocol):
    """What stages may use. Implemented by :class:`FluxAdapter`; an SD3 adapter would add another."""

    model: nn.Module
    blocks: list[BlockRef]

    def block(self, index: int) -> nn.Module: ...
    def embed(self, inputs: ModelInputs) -> BlockState: ...
    def run(self, state: BlockState, start: int, stop: int) -> BlockState: ...
    def head(self, state: BlockState) -> torch.Tensor: ...
    def swap(self, index: int, module: nn.Module) -> nn.Module: ...
    def mlps(self) -> list[MlpRef]: ...


class FluxAdapter:
    """Block-level access to a diffusers ``FluxTransformer2DModel`` (any size, FLUX.1-dev included)."""

    def __init__(self, model: FluxTransformer2DModel):
        self.model = model
        n_double = len(model.transformer_blocks)
        n_single = len(model.single_transformer_blocks)
        self.blocks: list[BlockRef] = [
            BlockRef(i, "double", f"transformer_blocks.{i}") for i in range(n_double)
        ] + [BlockRef(n_double + j, "single", f"single_transformer_blocks.{j}") for j in range(n_single)]

    def __len__(self) -> int:
        return len(self.blocks)

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

    def skip(self, index: int) -> nn.Module:
        """Replace block ``index`` by the identity; return the removed block (swap it back to undo)."""
        return self.swap(index, SkipBlock())

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
        ids = torch.cat((inputs.txt_ids, inputs.img_ids), dim=0)  # (N_txt + N_img, 3)
        image_rotary_emb = m.pos_embed(ids)
        return BlockState(hidden_states, encoder_hidden_states, temb, image_rotary_emb)

    def run(self, state: BlockState, start: int = 0, stop: int | None = None) -> BlockState:
        """Run blocks ``start .. stop-1`` (global indices, any kinds) on ``state``."""
        stop = len(self.blocks) if stop is None else stop
        if not 0 <= start <= stop <= len(self.blocks):
            raise IndexError(f"block range [{start}, {stop}) not within [0, {len(self.blocks)}]")
        return run_blocks([self.block(i) for i in range(start, stop)], state, self.model)

    def head(self, state: BlockState) -> torch.Tensor:
        """Everything after the last block: final modulated norm and projection → (B, N_img, C_out)."""
        hidden_states = self.model.norm_out(state.hidden_states, state.temb)
        return self.model.proj_out(hidden_states)

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """embed → all blocks → head; equals the model's own forward."""
        return self.head(self.run(self.embed(inputs)))


def run_blocks(modules: list[nn.Module], state: BlockState, model: nn.Module | None = None) -> BlockState:
    """Run block modules in order on ``state``. When gradients are on and ``model`` has diffusers'
    gradient checkpointing enabled (``model.enable_gradient_checkpointing()``), each block runs through
    the model's own ``_gradient_checkpointing_func``, as ``FluxTransformer2DModel.forward`` does: only
    block inputs are kept for backward, one block's activations are recomputed at a time."""
    checkpoint = model is not None and torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False)
    for block in modules:
        args = (state.hidden_states, state.encoder_hidden_states, state.temb, state.image_rotary_emb)
        if checkpoint:
            encoder_hidden_states, hidden_states = model._gradient_checkpointing_func(block, *args)
        else:
            encoder_hidden_states, hidden_states = block(*args)
        state = state.with_streams(encoder_hidden_states, hidden_states)
    return state


def adapter_for(model: nn.Module) -> BlockAdapter:
    """The block adapter for a transformer; stages call this, never a concrete class."""
    if isinstance(model, FluxTransformer2DModel):
        return FluxAdapter(model)
    raise TypeError(f"no block adapter for {type(model).__name__} (supported: FluxTransformer2DModel)")
