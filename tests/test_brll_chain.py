"""capture → solve → sandwich on a tiny base: the store re-runs blocks, the solve recovers the
residual's best linear fit, sandwich training beats the least-squares initialisation on held-out
pairs, and chain states (linears + peft LoRA) load back into the model."""

from pathlib import Path

import pytest
import torch
from tiny import digit_captions, tiny_params, write_tiny_base

from fastflux_core import capture as capture_mod
from fastflux_core.adapter import BlockState, adapter_for
from fastflux_core.brll import load_solution, save_solution, solve_store, wo_st_state
from fastflux_core.capture import NonFiniteActivations, capture_step
from fastflux_core.chain import ChainState, build_chain_model, make_plan
from fastflux_core.io import atomic_dir
from fastflux_core.lora import lora_tensors
from fastflux_core.sandwich import train_sandwich
from fastflux_core.source import load_transformer
from fastflux_core.store import StoreReader

ORDER = [3, 1, 4, 0, 2]  # step 1 replaces single block 3, step 2 double block 1, step 3 the last block


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    write_tiny_base(root, train_steps=150)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    params = tiny_params(**{"sandwich.holdout": 0.2, "sandwich.train_steps": 100})
    plan = make_plan(ORDER, 3, 5, params.sandwich.width)
    embeds = digit_captions()
    states, stores, records = [ChainState()], [], []
    for step in plan:
        path = root / f"capture{step.k}.zarr"
        capture_step(params, step, states[-1], embeds, f"b{step.block}", path)
        store = StoreReader(path)
        sols, metrics = solve_store(store, params.solve.ridge, 7)
        save_solution(root / f"solve{step.k}.safetensors", sols)
        state, record = train_sandwich(params, step, states[-1], load_solution(root / f"solve{step.k}.safetensors"), store)
        states.append(state)
        stores.append(store)
        records.append((metrics, record))
    yield {"root": root, "params": params, "plan": plan, "states": states, "stores": stores, "records": records,
           "embeds": embeds}
    mp.undo()


def test_store_holds_what_is_needed_to_rerun_the_sandwich(chain):
    store, step = chain["stores"][0], chain["plan"][0]
    assert store.attrs["sandwich"] == [2, 4] and store.n_samples == 10 * 2 * 3
    assert store.read("block_in_img").shape == (60 * 16, 32) and store.read("residual_txt").shape == (60 * 8, 32)
    base = adapter_for(load_transformer(chain["params"]))
    rotary = base.model.pos_embed(torch.cat([store.read("txt_ids"), store.read("img_ids")]))
    x = BlockState(store.read("sandwich_in_img"), store.read("sandwich_in_txt"), store.read("temb"), rotary)
    with torch.no_grad():
        y = base.run(x, *[step.sandwich[0], step.sandwich[1] + 1])
    torch.testing.assert_close(y.hidden_states, store.read("sandwich_out_img"), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.encoder_hidden_states, store.read("sandwich_out_txt"), rtol=1e-4, atol=1e-5)
    assert sorted(set(store.read("schedule_step").tolist())) == [0, 2, 3]


def test_solve_metrics(chain):
    metrics, _ = chain["records"][0]
    assert set(metrics) == {"joint"}  # single block: one shared linear
    assert 0 < metrics["joint"]["relative_residual"] < 1
    metrics2, _ = chain["records"][1]
    assert set(metrics2) == {"img", "txt"}  # double block: one per stream


def test_sandwich_training_beats_least_squares_init_on_held_out_pairs(chain):
    for _, rec in chain["records"]:
        assert rec["holdout_loss_trained"] < rec["holdout_loss_init"], rec


def test_overlap_and_edge_steps(chain):
    _, rec2 = chain["records"][1]
    assert rec2["sandwich"] == [0, 2] and rec2["lora_blocks"] == [0, 2] and rec2["linear_blocks"] == [1]
    _, rec3 = chain["records"][2]  # block 4 is last; block 3 (below) already replaced → u = 2, runs to the end
    assert rec3["sandwich"] == [2, 4] and rec3["linear_blocks"] == [3, 4] and rec3["lora_blocks"] == [2]


def test_chain_state_reloads_linears_and_lora(chain):
    state = chain["states"][2]
    assert sorted(state.linears) == [1, 3] and sorted(state.lora) == [0, 2, 4]
    adapter = build_chain_model(chain["params"], state)
    assert type(adapter.block(1)).__name__ == "LinearReplacement"
    torch.testing.assert_close(adapter.block(3).linears["joint"].weight.detach(), state.linears[3]["joint"][0])
    loaded = lora_tensors(adapter, [0, 2, 4])
    for i in (0, 2, 4):
        for name, t in state.lora[i].items():
            torch.testing.assert_close(loaded[i][name], t)
    # step 3 replaced block 4, which carried LoRA from step 1: its adapter is dropped
    assert 4 not in chain["states"][3].lora and sorted(chain["states"][3].linears) == [1, 3, 4]


def test_wo_st_state_uses_solved_linears_only(chain, tmp_path):
    dirs = []
    for k, step in enumerate(chain["plan"][:2], start=1):
        d = tmp_path / str(k)
        d.mkdir()
        (d / "info.json").write_text(f'{{"block": {step.block}}}')
        (d / "linear.safetensors").write_bytes((chain["root"] / f"solve{k}.safetensors").read_bytes())
        dirs.append(d)
    s = wo_st_state(dirs, chain["plan"][:2], {3: "single", 1: "double"})
    assert sorted(s.linears) == [1, 3] and not s.lora


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
            capture_step(chain["params"], chain["plan"][0], ChainState(), chain["embeds"], "b3", tmp / "store.zarr")
    assert not out.exists()


def test_interrupted_capture_leaves_nothing(chain, monkeypatch):
    calls = {"n": 0}
    real = capture_mod.sample_latents

    def interrupted(*args, **kwargs):
        on_step = kwargs["on_step"]

        def boom(s, batch):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            on_step(s, batch)

        return real(*args, **{**kwargs, "on_step": boom})

    monkeypatch.setattr(capture_mod, "sample_latents", interrupted)
    out = chain["root"] / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            capture_step(chain["params"], chain["plan"][0], ChainState(), chain["embeds"], "b3", tmp / "store.zarr")
    assert not out.exists() and not [p for p in Path(chain["root"]).iterdir() if p.name.startswith(".interrupted")]


def test_original_target_is_captured_from_the_unpruned_blocks(chain, tmp_path):
    params = tiny_params(**{"sandwich.target": "original"})
    # step 1: nothing modified yet, so the original and the current sandwich outputs agree
    capture_step(params, chain["plan"][0], chain["states"][0], chain["embeds"], "b3", tmp_path / "o1.zarr")
    s1 = StoreReader(tmp_path / "o1.zarr")
    torch.testing.assert_close(s1.read("original_out_img"), s1.read("sandwich_out_img"), rtol=1e-4, atol=1e-5)
    # step 2: block 2 carries step 1's LoRA, so the current model's sandwich [0, 2] differs from the original's
    capture_step(params, chain["plan"][1], chain["states"][1], chain["embeds"], "b1", tmp_path / "o2.zarr")
    s2 = StoreReader(tmp_path / "o2.zarr")
    orig, cur = s2.read("original_out_img"), s2.read("sandwich_out_img")
    assert orig.shape == cur.shape and torch.isfinite(orig).all()
    assert not torch.allclose(orig, cur, rtol=1e-3, atol=1e-4)
    assert "original_out_img" not in chain["stores"][1].group  # target=current stores no original states


def test_exactly_affine_block_is_recovered_through_capture_and_store(chain, monkeypatch, tmp_path):
    from fastflux_core.replacement import LinearReplacement

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
    capture_step(params, chain["plan"][0], ChainState(), chain["embeds"], "b3", tmp_path / "affine.zarr")
    sols, metrics = solve_store(StoreReader(tmp_path / "affine.zarr"), ridge=0.0, chunk_rows=100)
    torch.testing.assert_close(sols["joint"].weight.float(), w, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sols["joint"].bias.float(), b, rtol=1e-3, atol=1e-4)
    assert metrics["joint"]["relative_residual"] < 1e-4
