"""BRLL replacement block (paper §3.1, Fig. 2): a block whose residual branch is one linear map.

A FLUX or SD3 block computes ``out = x + f(x)`` per stream (f: attention + MLP, modulated by temb).
BRLL keeps the shortcut and replaces f by g(x) = W·x + b:

    double block (FLUX), joint block (SD3):
                   img' = img + W_img·img + b_img,   txt' = txt + W_txt·txt + b_txt
                   (the block has separate weights per stream, so does its replacement)
    single block (FLUX):
                   [txt'; img'] = [txt; img] + W·[txt; img] + b
                   (a single block applies one set of weights to the joined sequence)
    final block (SD3's last, ``context_pre_only``):
                   img' = img + W_img·img + b_img, and no text output — as the block

Either way every token goes through one D×D matmul: ≈ 0.087 TFLOPs for FLUX.1-dev at 1024² against
≈ 1.305 TFLOPs for the block it replaces. The module has the blocks' forward signature, so
an adapter's ``swap`` puts it in place, and it is registered with diffusers'
``TransformerBlockRegistry`` so diffusers' block hooks (layer skip, caching) accept it.

The "delete" baseline (residual branch removed, no linear) is :class:`SkipBlock`.

Both classes live in :mod:`fastflux_core.pruned_flux`, the self-contained file that ships with every
export (so the export loads without FastFLUX); this module is their name in the library.
"""

from fastflux_core.pruned_flux import STREAMS, LinearReplacement, SkipBlock

__all__ = ["STREAMS", "LinearReplacement", "SkipBlock"]
