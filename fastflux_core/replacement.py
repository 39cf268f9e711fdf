"""BRLL replacement block (paper §3.1, Fig. 2): a FLUX block whose residual branch is one linear map.

A FLUX block computes ``out = x + f(x)`` per stream (f: attention + MLP, modulated by temb). BRLL
keeps the shortcut and replaces f by g(x) = W·x + b:

    double block:  img' = img + W_img·img + b_img,   txt' = txt + W_txt·txt + b_txt
                   (a double block has separate weights per stream, so does its replacement)
    single block:  [txt'; img'] = [txt; img] + W·[txt; img] + b
                   (a single block applies one set of weights to the joined sequence)

Either way every token goes through one D×D matmul: ≈ 0.087 TFLOPs for FLUX.1-dev at 1024² against
≈ 1.305 TFLOPs for the block it replaces. The module has the blocks' forward signature, so
:meth:`fastflux_core.adapter.FluxAdapter.swap` puts it in place, and it is registered with diffusers'
``TransformerBlockRegistry`` so diffusers' block hooks (layer skip, caching) accept it.

The "delete" baseline (residual branch removed, no linear) is :class:`~fastflux_core.adapter.SkipBlock`.

>>> import torch
>>> r = LinearReplacement(dim=4, kind="single")
>>> enc, hid = r(torch.ones(1, 2, 4), torch.ones(1, 1, 4), temb=None)
>>> torch.equal(hid, torch.ones(1, 2, 4))  # initialised to the identity: g = 0
True
"""

from __future__ import annotations

import torch
from torch import nn

from fastflux_core.adapter import BlockKind

STREAMS = {"double": ("img", "txt"), "single": ("joint",)}


class LinearReplacement(nn.Module):
    """Shortcut + one linear per stream (double) or one shared linear (single). Starts at g = 0."""

    def __init__(self, dim: int, kind: BlockKind):
        super().__init__()
        self.kind = kind
        self.linears = nn.ModuleDict({s: nn.Linear(dim, dim) for s in STREAMS[kind]})
        for lin in self.linears.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS[self.kind]

    def set_affine(self, stream: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Load g's parameters: ``weight`` (D_out, D_in), ``bias`` (D_out,) — nn.Linear's layout."""
        lin = self.linears[stream]
        with torch.no_grad():
            lin.weight.copy_(weight.to(lin.weight.dtype))
            lin.bias.copy_(bias.to(lin.bias.dtype))

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, N_img, D)
        encoder_hidden_states: torch.Tensor,  # (B, N_txt, D)
        temb: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "double":
            img, txt = self.linears["img"], self.linears["txt"]
            return encoder_hidden_states + _apply(txt, encoder_hidden_states), hidden_states + _apply(img, hidden_states)
        g = self.linears["joint"]
        return encoder_hidden_states + _apply(g, encoder_hidden_states), hidden_states + _apply(g, hidden_states)


def _apply(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """g(x) in the linear's dtype, returned in x's: trainable fp32 linears inside a bf16 model."""
    return linear(x.to(linear.weight.dtype)).to(x.dtype)


def _register_with_diffusers() -> None:
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    from fastflux_core.adapter import SkipBlock

    for cls in (LinearReplacement, SkipBlock):
        TransformerBlockRegistry.register(
            model_class=cls,
            metadata=TransformerBlockMetadata(return_hidden_states_index=1, return_encoder_hidden_states_index=0),
        )


_register_with_diffusers()
