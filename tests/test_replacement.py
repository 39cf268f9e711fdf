"""The BRLL replacement block: out = x + W·x + b per stream, a drop-in for both FLUX block kinds."""

import torch
from tiny import tiny_transformer

from fastflux_core import blocks, pruned_flux
from fastflux_core.flux import FluxAdapter
from fastflux_core.pruned_flux import LinearReplacement, SkipBlock
from test_adapter import _inputs, _model_forward


def test_double_uses_one_linear_per_stream_single_shares_one():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(2, 5, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    d = LinearReplacement(8, "double")
    wi, bi, wt, bt = torch.randn(8, 8, generator=g), torch.randn(8, generator=g), torch.randn(8, 8, generator=g), torch.randn(8, generator=g)
    d.set_affine("img", wi, bi)
    d.set_affine("txt", wt, bt)
    enc, hid = d(img, txt, temb=None)
    torch.testing.assert_close(hid, img + img @ wi.T + bi)
    torch.testing.assert_close(enc, txt + txt @ wt.T + bt)
    s = LinearReplacement(8, "single")
    s.set_affine("joint", wi, bi)
    enc, hid = s(img, txt, temb=None)
    torch.testing.assert_close(hid, img + img @ wi.T + bi)
    torch.testing.assert_close(enc, txt + txt @ wi.T + bi)


@torch.no_grad()
def test_swapped_into_the_model_and_zero_init_equals_skip():
    x = _inputs()
    m1, m2 = tiny_transformer(), tiny_transformer()
    FluxAdapter(m1).swap(1, LinearReplacement(m1.inner_dim, "double"))
    FluxAdapter(m1).swap(3, LinearReplacement(m1.inner_dim, "single"))
    FluxAdapter(m2).swap(1, SkipBlock())
    FluxAdapter(m2).swap(3, SkipBlock())
    torch.testing.assert_close(_model_forward(m1, x), _model_forward(m2, x))


def test_registered_with_diffusers_block_registry():
    from diffusers.hooks._helpers import TransformerBlockRegistry

    meta = TransformerBlockRegistry.get(LinearReplacement)
    assert (meta.return_hidden_states_index, meta.return_encoder_hidden_states_index) == (1, 0)


def test_the_shipped_streams_table_is_the_librarys():
    """pruned_flux.py is shipped with every export and imports nothing of ours, so it keeps its own copy
    of the kind → streams table that solve reads from blocks.py (without diffusers)."""
    assert pruned_flux.STREAMS == blocks.STREAMS
