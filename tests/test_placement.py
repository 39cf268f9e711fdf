"""Placement changes where weights live, never what a model computes: diffusers' block-level group
offloading (run for real, with the CPU as both homes) gives the resident model's outputs, through the
model's forward and block by block; ``placed`` leaves the model on the host afterwards."""

import torch
from tiny import tiny_transformer

from fastflux_core.flux import FluxAdapter
from fastflux_core.placement import place, place_blocks, placed
from test_adapter import _inputs, _model_forward

CPU = torch.device("cpu")


@torch.no_grad()
def test_offloaded_forward_equals_resident():
    x = _inputs()
    want = _model_forward(tiny_transformer(0), x)
    model = place(tiny_transformer(0), CPU, "offloaded")
    assert getattr(model, "_fastflux_offloaded", False)
    torch.testing.assert_close(_model_forward(model, x), want, rtol=0, atol=0)
    torch.testing.assert_close(_model_forward(place(model, CPU, "offloaded"), x), want, rtol=0, atol=0)  # idempotent


@torch.no_grad()
def test_block_by_block_with_an_offloaded_prefix_equals_resident():
    x = _inputs()
    ref = FluxAdapter(tiny_transformer(0))
    want = ref.run(ref.embed(x), 0, 4)
    a = FluxAdapter(tiny_transformer(0))
    place_blocks(a, [a.block(j) for j in range(2)], [a.block(j) for j in range(2, 4)], CPU, offload=True)
    got = a.run(a.embed(x), 0, 4)
    torch.testing.assert_close(got.hidden_states, want.hidden_states, rtol=0, atol=0)
    torch.testing.assert_close(got.encoder_hidden_states, want.encoder_hidden_states, rtol=0, atol=0)


def test_placed_returns_a_resident_model_to_the_host():
    model = tiny_transformer(0)
    with placed(model, CPU, "resident") as m:
        assert next(m.parameters()).device == CPU
    assert next(model.parameters()).device == CPU
