"""FLOPs are counted with attention on the CPU too (FLUX.1-dev block at 1024², fake tensors), and
latency is timed in a balanced ABBA order."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastflux_core.speed import abba_order, block_flops, count_flops, latency


@pytest.mark.parametrize("kind", ["double", "single"])
def test_flux_dev_block_flops_match_the_analytic_count(kind):
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

    cls = FluxTransformerBlock if kind == "double" else FluxSingleTransformerBlock
    dtype = torch.get_default_dtype()
    try:
        with FakeTensorMode():  # no memory, no compute: FLUX.1-dev's real width and 1024² sequence on the CPU
            torch.set_default_dtype(torch.bfloat16)
            block = cls(dim=3072, num_attention_heads=24, attention_head_dim=128)
            img, txt, temb = torch.randn(1, 4096, 3072), torch.randn(1, 512, 3072), torch.randn(1, 3072)
            rotary = (torch.randn(4608, 128), torch.randn(4608, 128))
            counted = count_flops(lambda: block(hidden_states=img, encoder_hidden_states=txt, temb=temb,
                                                image_rotary_emb=rotary))
    finally:
        torch.set_default_dtype(dtype)
    expected = block_flops(kind, dim=3072, n_img=4096, n_txt=512)
    assert abs(counted - expected) / expected < 0.01
    attention = 4 * 4608**2 * 3072
    assert counted > expected - attention / 2  # attention (a fifth of the block) is in the count


def test_abba_order_is_balanced():
    order = abba_order(6)
    assert order == [(0, 1), (1, 0)] * 3
    assert sum(a == 0 for a, _ in order) == sum(a == 1 for a, _ in order)


def test_latency_times_both_in_abba_order_after_warmup():
    calls = []
    out = latency((lambda: calls.append("A"), lambda: calls.append("B")), warmup=2, repeats=4)
    assert "".join(calls) == "ABAB" + "ABBAABBA"
    assert [len(o["times"]) for o in out] == [4, 4]
    assert all(o["median"] > 0 and o["iqr"] >= 0 for o in out)
