"""FLOPs are counted with attention on the CPU too (FLUX.1-dev block at 1024², fake tensors), and
latency is timed in A B B A phases with one model on the device at a time."""

from contextlib import contextmanager

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastflux_core.speed import block_flops, count_flops, latency_phases


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


def test_latency_phases_run_a_b_b_a_with_one_model_on_the_device_at_a_time():
    calls, active = [], []

    @contextmanager
    def on_device(name):
        assert not active, "two models on the device"
        active.append(name)
        calls.append(f"[{name}")
        yield
        active.pop()

    out = latency_phases((lambda: on_device("A"), lambda: on_device("B")),
                         (lambda: calls.append("a"), lambda: calls.append("b")), warmup=1, repeats=4)
    assert "".join(calls) == "[Aaaa" + "[Bbbb" + "[Bbbb" + "[Aaaa"  # warm-up, then 2 timed calls per phase
    assert [len(o["times"]) for o in out] == [4, 4]
    assert all(o["median"] > 0 and o["iqr"] >= 0 for o in out)
