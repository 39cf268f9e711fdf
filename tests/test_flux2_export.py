"""A pruned FLUX.2 transformer as it is exported (pruned_flux.PrunedFlux2Transformer2DModel, issue 31):
its own forward — which calls blocks by keyword, joins the streams before the single blocks and,
under gradient checkpointing, calls them positionally — computes what the adapter computed on the
chain model; it saves, reloads (our class, diffusers' remote code, contiguous numbering) to the same
output, and the plain class refuses it."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_flux2 import inputs
from tiny import tiny_flux2

from fastflux_core.export import PrunedFlux2Transformer2DModel, load_pruned, to_pruned
from fastflux_core.flux2 import Flux2Adapter
from fastflux_core.pruned_flux import (Flux2DoubleReplacement, Flux2SingleReplacement, Flux2SingleSkip,
                                       LinearReplacement, SkipBlock)


@pytest.fixture(scope="module")
def chain():
    """The chain model as training leaves it: FLUX.1-signature stand-ins in a FLUX.2 model — a trained
    (random) linear at the last double block and the first single block, block 3 deleted — and the
    adapter's output on fixed inputs."""
    a = Flux2Adapter(tiny_flux2(seed=3))
    g = torch.Generator().manual_seed(0)
    for i in (1, 2):
        rep = LinearReplacement(a.model.inner_dim, a.blocks[i].kind)
        for s in rep.streams:
            rep.set_affine(s, 0.1 * torch.randn(32, 32, generator=g), 0.1 * torch.randn(32, generator=g))
        a.swap(i, rep)
    a.swap(3, SkipBlock())
    with torch.no_grad():
        return a.model, a.forward(inputs())


def test_the_exported_models_own_forward_is_the_chain_models(chain):
    model, out = chain
    pruned = to_pruned(model, [1, 2], [3])
    assert type(pruned) is PrunedFlux2Transformer2DModel
    assert [type(b) for b in (pruned.transformer_blocks[1], pruned.single_transformer_blocks[0],
                              pruned.single_transformer_blocks[1])] == [Flux2DoubleReplacement, Flux2SingleReplacement,
                                                                        Flux2SingleSkip]
    with torch.no_grad():
        assert torch.allclose(Flux2Adapter(pruned).call(inputs()), out, atol=1e-5)
    pruned.enable_gradient_checkpointing()  # the model's positional calls
    pruned.train()
    assert torch.allclose(Flux2Adapter(pruned).call(inputs()).detach(), out, atol=1e-5)


def test_saved_it_reloads_to_the_same_output_and_the_plain_class_refuses(chain, tmp_path, monkeypatch):
    from diffusers import AutoModel, Flux2Transformer2DModel

    model, out = chain
    to_pruned(model, [1, 2], [3]).save_pretrained(str(tmp_path / "t"))
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["auto_map"] == {"AutoModel": "pruned_flux.PrunedFlux2Transformer2DModel"}
    with pytest.raises(ValueError, match="PrunedFlux2Transformer2DModel"):
        Flux2Transformer2DModel.from_pretrained(str(tmp_path / "t"))
    with torch.no_grad():
        assert torch.allclose(Flux2Adapter(load_pruned(tmp_path / "t")).call(inputs()), out, atol=1e-5)
        for name in [n for n in sys.modules if n.split(".")[0] in ("fastflux_core", "diffusers_modules")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "fastflux_core", None)  # the folder's own pruned_flux.py
        remote = AutoModel.from_pretrained(str(tmp_path / "t"), trust_remote_code=True)
        monkeypatch.undo()
        assert type(remote).__module__.startswith("diffusers_modules")
        assert torch.allclose(Flux2Adapter(remote).call(inputs()), out, atol=1e-5)


def test_contiguous_numbering_round_trips(chain, tmp_path):
    model, out = chain
    to_pruned(model, [1, 2], [3]).save_pretrained(str(tmp_path / "c"), numbering="contiguous")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (config["num_layers"], config["num_single_layers"]) == (1, 0)  # kept: double 0; no single
    with torch.no_grad():
        assert torch.allclose(Flux2Adapter(load_pruned(tmp_path / "c")).call(inputs()), out, atol=1e-5)


def test_a_timestep_aware_replacement_is_refused():
    with pytest.raises(ValueError, match="never receives the timestep embedding"):
        PrunedFlux2Transformer2DModel(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                      num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=(4, 4, 4, 4),
                                      replaced_blocks=[1], conditioned_blocks=[1])
