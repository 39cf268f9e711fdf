"""Capture: what a chain step's stores hold — the transformer's inputs the sampler gave at step k with
the chain after step k − 1, from which the sandwich's boundary states are recomputed exactly; the
least-squares and sandwich prompt sets stay apart; non-finite activations name their block; an
interrupted capture leaves nothing; an exactly affine block is recovered through capture and store.
The chain is tests/chain_fixture.py's, built once."""

from pathlib import Path

import pytest
import torch
from chain_fixture import boundary_states, store_items
from tiny import tiny_params

from fastflux_core import capture as capture_mod
from fastflux_core.capture import NonFiniteActivations, capture_step
from fastflux_core.chain import ChainState
from fastflux_core.chain_model import build_chain_model
from fastflux_core.codec import pack
from fastflux_core.io import atomic_dir
from fastflux_core.sampling import initial_noise
from fastflux_core.solve import solve_store
from fastflux_core.store import StoreReader


def test_training_store_holds_the_transformer_inputs_the_sampler_gave(chain):
    cal, store = chain["stores"][0]
    assert store.attrs["sandwich"] == [2, 4] and store.n_samples == 10 * 4 * 3  # training: 10 prompts × 4 seeds × 3 steps
    assert cal.n_samples == 10 * 2 * 3 and cal.read("block_in_img").shape == (60 * 16, 32)
    assert cal.read("residual_txt").shape == (60 * 8, 32)
    assert store.read("latents").shape == (120, 16, 4)  # (sample, N_img, C_in): no hidden states stored
    assert sorted(set(store.read("schedule_step").tolist())) == [0, 2, 3]  # the whole 4-step schedule is spanned
    first = torch.nonzero(store.read("schedule_step") == 0).flatten()
    noise = pack(initial_noise([type("Item", (), {"seed": int(s)}) for s in store.read("seed")[first]], 1, 8, 8))
    torch.testing.assert_close(store.read("latents")[first], noise)  # step 0 sees each item's own seeded noise
    assert store.read("timestep")[first].eq(1.0).all()


def test_recomputed_boundary_states_are_those_of_the_models_own_forward(chain):
    """x_u and y_d from the stored inputs equal what block u receives and block d returns when the
    current model (after step 1) runs its own forward on those inputs."""
    params, step, state = chain["params"], chain["plan"][1], chain["states"][1]
    _, store = chain["stores"][1]
    b = boundary_states(params, step, state, store, chain["train"]).compute(torch.arange(store.n_samples))
    model = build_chain_model(params, state).model
    seen = {}
    u, d = step.sandwich
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    blocks[u].register_forward_pre_hook(lambda m, a, kw: seen.update(x=kw["hidden_states"], t=kw["encoder_hidden_states"]),
                                        with_kwargs=True)
    blocks[d].register_forward_hook(lambda m, a, kw, out: seen.update(y=out[1], yt=out[0]), with_kwargs=True)
    prompt_embeds, pooled = chain["train"].select(store.read("prompt"))
    with torch.no_grad():
        model(hidden_states=store.read("latents"), timestep=store.read("timestep"), pooled_projections=pooled,
              encoder_hidden_states=prompt_embeds, img_ids=store.read("img_ids"), txt_ids=store.read("txt_ids"),
              guidance=None, return_dict=False)
    torch.testing.assert_close(b.img, seen["x"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.txt, seen["t"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.y_img, seen["y"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.y_txt, seen["yt"], rtol=1e-5, atol=1e-6)


def test_least_squares_and_sandwich_data_come_from_disjoint_items(chain):
    for cal, train in chain["stores"]:
        assert cal.attrs["prompt_set"] == "calibration" and train.attrs["prompt_set"] == "training"
        assert not store_items(cal) & store_items(train)
        assert not {p for p, _ in store_items(cal)} & {p for p, _ in store_items(train)}


def test_non_finite_activations_name_the_block(chain, monkeypatch):
    real = capture_mod.build_chain_model

    def poisoned(params, state, new_lora=()):
        adapter = real(params, state, new_lora)
        adapter.block(3).register_forward_hook(lambda m, a, out: (out[0], out[1] * float("nan")))
        return adapter

    monkeypatch.setattr(capture_mod, "build_chain_model", poisoned)
    out = chain["root"] / "nan"
    with pytest.raises(NonFiniteActivations, match="block b3"):
        with atomic_dir(out) as tmp:
            capture_step(chain["params"], chain["plan"][0], ChainState(), chain["cal"], chain["train"], "b3", tmp)
    assert not out.exists()


def test_interrupted_capture_leaves_nothing(chain, monkeypatch):
    calls = {"n": 0}
    real = capture_mod.sample_latents

    def interrupted(*args, **kwargs):
        on_step = kwargs["on_step"]

        def boom(s, batch, inputs, negative):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            on_step(s, batch, inputs, negative)

        return real(*args, **{**kwargs, "on_step": boom})

    monkeypatch.setattr(capture_mod, "sample_latents", interrupted)
    out = chain["root"] / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            capture_step(chain["params"], chain["plan"][0], ChainState(), chain["cal"], chain["train"], "b3", tmp)
    assert not out.exists() and not [p for p in Path(chain["root"]).iterdir() if p.name.startswith(".interrupted")]


def test_exactly_affine_block_is_recovered_through_capture_and_store(chain, monkeypatch, tmp_path):
    from fastflux_core.pruned_flux import LinearReplacement

    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(32, 32, generator=g) * 0.05, torch.randn(32, generator=g) * 0.1
    real = capture_mod.build_chain_model

    def affine_block(params, state, new_lora=()):
        adapter = real(params, state, new_lora)
        rep = LinearReplacement(32, "single")
        rep.set_affine("joint", w, b)
        adapter.swap(3, rep)  # block 3's residual branch is now exactly x ↦ W·x + b
        return adapter

    monkeypatch.setattr(capture_mod, "build_chain_model", affine_block)
    params = tiny_params(**{"capture.dtype": "float32"})
    capture_step(params, chain["plan"][0], ChainState(), chain["cal"], chain["train"], "b3", tmp_path)
    sols, metrics = solve_store(StoreReader(tmp_path / "calibration.zarr"), ridge=0.0, chunk_rows=100)
    torch.testing.assert_close(sols["joint"].weight.float(), w, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sols["joint"].bias.float(), b, rtol=1e-3, atol=1e-4)
    assert metrics["joint"]["relative_residual"] < 1e-4


def test_capture_at_step_k_samples_with_the_chain_after_step_k_minus_1(chain):
    """Issue 30 (17): the training-store check above compares schedule step 0 (pure noise), which any
    model gives. At a later schedule step step 2's store must hold what the chain *after step 1*
    feeds its transformer — the base model's trajectory is another one."""
    from fastflux_core.prompts import GenItem
    from fastflux_core.sampling import sample_latents
    from fastflux_core.source import load_scheduler

    params = chain["params"]
    _, store = chain["stores"][1]  # captured at step 2, from the model after step 1
    rows = torch.nonzero(store.read("schedule_step") == 2).flatten()
    items = [GenItem(int(p), int(s)) for p, s in zip(store.read("prompt")[rows], store.read("seed")[rows])]

    def inputs_at_step_2(state: ChainState) -> torch.Tensor:
        seen = torch.zeros(len(items), *store.read("latents").shape[1:])
        model = build_chain_model(params, state).model

        def on_step(i, batch, x, negative):
            if i == 2:
                seen[batch] = x.hidden_states.float()

        with torch.no_grad():
            sample_latents(model, load_scheduler(params.model), chain["train"], items, params.sampling, 1, 1,
                           progress=False, on_step=on_step)
        return seen

    stored = store.read("latents")[rows].float()
    torch.testing.assert_close(stored, inputs_at_step_2(chain["states"][1]), rtol=1e-5, atol=1e-6)
    assert (stored - inputs_at_step_2(chain["states"][0])).abs().max() > 1e-3  # the base model's differ
