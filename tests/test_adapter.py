"""The block-level adapter reproduces the model's own forward, range by range."""

import pytest
import torch
from tiny import tiny_transformer

from fastflux_core.blocks import ModelInputs
from fastflux_core.codec import latent_ids
from fastflux_core.flux import FluxAdapter
from fastflux_core.pruned_flux import SkipBlock


def _inputs(b: int = 2, seed: int = 1, guidance: bool = True) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(
        hidden_states=torch.randn(b, 16, 16, generator=g),  # 8×8 latent cells → 16 tokens of 4·4 channels
        encoder_hidden_states=torch.randn(b, 5, 32, generator=g),
        pooled_projections=torch.randn(b, 32, generator=g),
        timestep=torch.rand(b, generator=g),
        img_ids=latent_ids(8, 8),
        txt_ids=torch.zeros(5, 3),
        guidance=torch.full((b,), 3.5) if guidance else None,
    )


def _model_forward(model, x: ModelInputs) -> torch.Tensor:
    return model(
        hidden_states=x.hidden_states, encoder_hidden_states=x.encoder_hidden_states,
        pooled_projections=x.pooled_projections, timestep=x.timestep, img_ids=x.img_ids,
        txt_ids=x.txt_ids, guidance=x.guidance, return_dict=False,
    )[0]


def test_blocks_in_execution_order():
    a = FluxAdapter(tiny_transformer())
    assert [b.kind for b in a.blocks] == ["double"] * 2 + ["single"] * 3
    assert [b.index for b in a.blocks] == list(range(5))
    assert a.blocks[2].path == "single_transformer_blocks.0" and a.blocks[2].name == "s00"
    assert a.block(3) is a.model.single_transformer_blocks[1]


@pytest.mark.parametrize("guidance", [True, False])
@torch.no_grad()
def test_ranges_equal_model_forward(guidance):
    model = tiny_transformer(guidance_embeds=guidance)
    a, x = FluxAdapter(model), _inputs(guidance=guidance)
    ref = _model_forward(model, x)
    state = a.embed(x)
    for start, stop in [(0, 1), (1, 3), (3, 3), (3, 5)]:  # (1, 3) crosses the double→single boundary
        state = a.run(state, start, stop)
    torch.testing.assert_close(a.head(state), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.forward(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", [0, 1, 2, 4])
@torch.no_grad()
def test_skip_is_identity_on_that_block(index):
    model = tiny_transformer()
    a, x = FluxAdapter(model), _inputs()
    state = a.run(a.embed(x), 0, index)
    original = a.skip(index)
    skipped = a.run(state, index, index + 1)
    assert skipped.hidden_states is state.hidden_states
    assert skipped.encoder_hidden_states is state.encoder_hidden_states
    # the model's own forward sees the skip: equals running every other block
    rest = a.run(a.run(a.embed(x), 0, index), index + 1)
    torch.testing.assert_close(_model_forward(model, x), a.head(rest), rtol=1e-5, atol=1e-6)
    # and it changes the output (the block did something), until swapped back
    a.swap(index, original)
    assert not torch.allclose(_model_forward(model, x), a.head(rest))


@torch.no_grad()
def test_swap_any_module_with_the_block_signature():
    class Scale(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            return 2 * encoder_hidden_states, 2 * hidden_states

    a, x = FluxAdapter(tiny_transformer()), _inputs()
    state = a.embed(x)
    old = a.swap(2, Scale())
    out = a.run(state, 2, 3)
    torch.testing.assert_close(out.hidden_states, 2 * state.hidden_states)
    assert isinstance(a.swap(2, old), Scale) and a.block(2) is old
    assert isinstance(SkipBlock()(state.hidden_states, state.encoder_hidden_states, state.temb)[1], torch.Tensor)


def test_bad_ranges_raise():
    a = FluxAdapter(tiny_transformer())
    with pytest.raises(IndexError):
        a.block(5)
    with pytest.raises(IndexError):
        a.run(a.embed(_inputs()), 3, 2)


def test_adapter_for_dispatches_on_model_class():
    from fastflux_core.families import adapter_for

    assert isinstance(adapter_for(tiny_transformer()), FluxAdapter)
    with pytest.raises(TypeError, match="Linear"):
        adapter_for(torch.nn.Linear(2, 2))
