"""capture → solve → sandwich on a tiny base: the training store holds the transformer's inputs from
which the sandwich's boundary states are recomputed exactly, the two prompt sets stay apart, the
solve is numpy's least squares, sandwich training beats the least-squares initialisation on held-out
prompts without moving frozen weights, and chain states (linears + peft LoRA) load back."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import digit_captions, tiny_params, tiny_workdir

from fastflux_core import capture as capture_mod
from fastflux_core.capture import NonFiniteActivations, capture_step
from fastflux_core.chain import ChainState, build_chain_model, load_solution, make_plan
from fastflux_core.codec import pack
from fastflux_core.io import atomic_dir
from fastflux_core.lora import lora_tensors
from fastflux_core.sampling import initial_noise
from fastflux_core.boundary import BoundaryStates
from fastflux_core.sandwich import fit_sandwich, prepare_sandwich, train_sandwich
from fastflux_core.solve import replacement_for, row_weight, save_solution, solve_store
from fastflux_core.store import StoreReader
from fastflux_core.training import holdout_split

ORDER = [3, 1, 4, 0, 2]  # step 1 replaces single block 3, step 2 double block 1, step 3 the last block


def _items(store: StoreReader) -> set[tuple[str, int]]:
    prompts = store.attrs["prompts"]
    return {(prompts[int(p)], int(s)) for p, s in zip(store.read("prompt"), store.read("seed"))}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root, mp = tiny_workdir(tmp_path_factory, "chain", train_steps=150)
    params = tiny_params(**{"sandwich.train_steps": 100})
    plan = make_plan(ORDER, 3, 5, params.sandwich.width)
    cal, train = digit_captions(name="calibration"), digit_captions(name="training")
    states, stores, records = [ChainState()], [], []
    for step in plan:
        out = root / f"capture{step.k}"
        out.mkdir()
        capture_step(params, step, states[-1], cal, train, f"b{step.block}", out)
        store = StoreReader(out / "calibration.zarr")
        sols, metrics = solve_store(store, params.solve.ridge, 7)
        save_solution(root / f"solve{step.k}.safetensors", sols)
        state, record = train_sandwich(params, step, states[-1], load_solution(root / f"solve{step.k}.safetensors"),
                                       StoreReader(out / "training.zarr"), train)
        states.append(state)
        stores.append((store, StoreReader(out / "training.zarr")))
        records.append((metrics, record, sols))
    yield {"root": root, "params": params, "plan": plan, "states": states, "stores": stores, "records": records,
           "cal": cal, "train": train}
    mp.undo()


def _boundary(params, step, state, store, embeds):
    adapter, _, target = prepare_sandwich(params, step, state, load_solution(Path(f"solve{step.k}.safetensors")))
    return BoundaryStates(store, embeds, adapter, target, step.sandwich[0], 7, torch.device("cpu"))


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
    b = _boundary(params, step, state, store, chain["train"]).compute(torch.arange(store.n_samples))
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
        assert not _items(cal) & _items(train)
        assert not {p for p, _ in _items(cal)} & {p for p, _ in _items(train)}


def test_held_out_items_are_in_no_training_batch_and_no_least_squares_fit(chain, monkeypatch):
    params, step = chain["params"], chain["plan"][0]
    cal, train = chain["stores"][0]
    split = holdout_split(train, params.sandwich.holdout, seed=0)
    assert len(split.holdout_prompts) == 2  # 20 % of 10 prompts, all their seeds and schedule steps
    held = {(train.attrs["prompts"][int(train.read("prompt")[i])], int(train.read("seed")[i])) for i in split.holdout}
    assert len(held) == 2 * 4 and not held & _items(cal)
    seen: list[torch.Tensor] = []
    real = BoundaryStates.compute
    monkeypatch.setattr(BoundaryStates, "compute", lambda self, idx: (seen.append(idx.clone()), real(self, idx))[1])
    adapter, trainable, target = prepare_sandwich(params, step, ChainState(),
                                                  load_solution(chain["root"] / "solve1.safetensors"))
    data = BoundaryStates(train, chain["train"], adapter, target, step.sandwich[0], 3, torch.device("cpu"))
    fit_sandwich(adapter, trainable, data, split, *step.sandwich, params.sandwich.model_copy(update={"train_steps": 20}), 1)
    n_rounds = -(-len(split.train) // params.sandwich.round_samples)
    held_out = set(split.holdout.tolist())
    on_train = [idx for idx in seen if not set(idx.tolist()) & held_out]
    on_held_out = [idx for idx in seen if set(idx.tolist()) <= held_out]
    # each training sample's states computed once; held-out ones for the checks, then for the final measure
    assert n_rounds == 3 and len(on_train) == n_rounds and len(on_held_out) == 2 and len(seen) == n_rounds + 2
    assert sorted(torch.cat(on_train).tolist()) == sorted(split.train.tolist())
    assert sorted(seen[-1].tolist()) == sorted(split.holdout.tolist())


def test_solve_is_numpy_least_squares_with_token_weights(chain):
    cal, _ = chain["stores"][0]
    metrics, _, sols = chain["records"][0]
    assert set(metrics) == {"joint"}  # single block: one shared linear over both streams
    rows = []
    for s in ("img", "txt"):
        x, r = cal.read(f"block_in_{s}").double().numpy(), cal.read(f"residual_{s}").double().numpy()
        rows.append((np.hstack([x, np.ones((len(x), 1))]) * np.sqrt(row_weight(cal, s)), r * np.sqrt(row_weight(cal, s))))
    x, r = np.vstack([a for a, _ in rows]), np.vstack([b for _, b in rows])
    ridge = chain["params"].solve.ridge * np.mean(np.diag(x.T @ x)[:-1])
    a = x.T @ x + ridge * np.diag([1.0] * (x.shape[1] - 1) + [0.0])
    want = np.linalg.solve(a, x.T @ r)  # (D+1, D): [Wᵀ; bᵀ]
    np.testing.assert_allclose(sols["joint"].weight.numpy(), want[:-1].T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sols["joint"].bias.numpy(), want[-1], rtol=1e-6, atol=1e-8)
    res = np.linalg.norm(r - x @ want) / np.linalg.norm(r)
    assert metrics["joint"]["relative_residual"] == pytest.approx(res, rel=1e-6)
    assert set(chain["records"][1][0]) == {"img", "txt"}  # double block: one per stream


def test_sandwich_training_beats_least_squares_init_on_held_out_prompts(chain):
    """Where training beats the start on held-out prompts its best state is kept; where it does not
    (here step 3, the last block, in its 100 steps), the least-squares start is."""
    beaten = 0
    for _, rec, _ in chain["records"]:
        assert rec["holdout_prompts"] == 2 and rec["holdout_items"] == 8
        assert rec["holdout_loss_trained"] <= rec["holdout_loss_init"], rec
        assert (rec["best_step"] == 0) == (rec["holdout_loss_trained"] == rec["holdout_loss_init"]), rec
        beaten += rec["holdout_loss_trained"] < rec["holdout_loss_init"]
    assert beaten >= 2


def test_sandwich_moves_only_its_trainable_parameters(chain):
    params, step = chain["params"], chain["plan"][1]  # double block 1, LoRA on blocks 0 and 2
    adapter, trainable, target = prepare_sandwich(params, step, chain["states"][1],
                                                  load_solution(chain["root"] / "solve2.safetensors"))
    ids = {id(p) for p in trainable}
    frozen = {n: p.detach().clone() for n, p in adapter.model.named_parameters() if id(p) not in ids}
    assert all(p.dtype == torch.float32 and p.requires_grad for p in trainable)
    _, train = chain["stores"][1]
    split = holdout_split(train, 0.2, seed=0)
    before = [p.detach().clone() for p in trainable]
    data = BoundaryStates(train, chain["train"], adapter, target, step.sandwich[0], 5, torch.device("cpu"))
    record = fit_sandwich(adapter, trainable, data, split, *step.sandwich,
                          params.sandwich.model_copy(update={"train_steps": 60, "eval_every": 10, "patience": None}), 1)
    for n, p in adapter.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert record["best_step"] > 0 and any(not torch.equal(a, p) for a, p in zip(before, trainable))


def test_lora_initialisation_is_seeded(chain):
    params, step = chain["params"], chain["plan"][0]
    sol = load_solution(chain["root"] / "solve1.safetensors")
    torch.manual_seed(1)
    a = lora_tensors(prepare_sandwich(params, step, ChainState(), sol)[0], step.lora_blocks())
    torch.manual_seed(2)  # the global generator's state must not matter
    b = lora_tensors(prepare_sandwich(params, step, ChainState(), sol)[0], step.lora_blocks())
    for i in a:
        for name in a[i]:
            assert torch.equal(a[i][name], b[i][name])


def test_overlap_and_edge_steps(chain):
    _, rec2, _ = chain["records"][1]
    assert rec2["sandwich"] == [0, 2] and rec2["lora_blocks"] == [0, 2] and rec2["linear_blocks"] == [1]
    _, rec3, _ = chain["records"][2]  # block 4 is last; block 3 (below) already replaced → u = 2, runs to the end
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


def test_without_sandwich_training_a_step_keeps_its_solved_linear_and_adds_no_lora(chain):
    """``sandwich.train: false`` (paper Fig. 6 "w/o ST" as its own chain): the state after the step
    is the previous one plus the least-squares linear, exactly; the next step captures from it."""
    params = tiny_params(**{"sandwich.train": False})
    step, (_, store) = chain["plan"][0], chain["stores"][0]
    solved = load_solution(Path("solve1.safetensors"))
    state, record = train_sandwich(params, step, ChainState(), solved, store, chain["train"])
    assert record["trained"] is False and not state.lora and sorted(state.linears) == [3]
    torch.testing.assert_close(state.linears[3]["joint"][0], solved["joint"][0], rtol=0, atol=0)
    adapter = build_chain_model(params, state)
    assert not any("lora" in n for n, _ in adapter.model.named_parameters())
    torch.testing.assert_close(adapter.block(3).linears["joint"].bias.detach(), solved["joint"][1], rtol=0, atol=0)


def test_deletion_with_sandwich_training_trains_only_the_neighbours_lora(chain, tmp_path):
    """``solve.replacement: delete``: no linear (the block is the identity, in the chain and in the
    saved state), and Sandwich Training still repairs the neighbours: held-out loss falls."""
    params = tiny_params(**{"sandwich.train_steps": 100, "solve.replacement": "delete"})
    step, (cal, store) = chain["plan"][0], chain["stores"][0]
    solved, metrics = replacement_for(cal, params.solve)
    assert solved == {} and metrics == {}
    state, record = train_sandwich(params, step, ChainState(), solved, store, chain["train"])
    assert record["replacement"] == "delete" and record["trainable_params"] > 0
    assert record["holdout_loss_trained"] < record["holdout_loss_init"]
    assert state.linears == {3: {}} and sorted(state.lora) == step.lora_blocks()
    state.save(tmp_path)
    loaded = ChainState.load(tmp_path)
    assert loaded.linears == {3: {}} and loaded.deleted() == [3]
    assert type(build_chain_model(params, loaded).block(3)).__name__ == "SkipBlock"


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

        def boom(s, batch, inputs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            on_step(s, batch, inputs)

        return real(*args, **{**kwargs, "on_step": boom})

    monkeypatch.setattr(capture_mod, "sample_latents", interrupted)
    out = chain["root"] / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            capture_step(chain["params"], chain["plan"][0], ChainState(), chain["cal"], chain["train"], "b3", tmp)
    assert not out.exists() and not [p for p in Path(chain["root"]).iterdir() if p.name.startswith(".interrupted")]


def test_original_target_comes_from_the_unpruned_blocks(chain):
    params = tiny_params(**{"sandwich.target": "original"})
    _, s1 = chain["stores"][0]
    idx = torch.arange(0, s1.n_samples, 5)
    # step 1: nothing modified yet, so the original and the current sandwich outputs agree
    cur = _boundary(chain["params"], chain["plan"][0], chain["states"][0], s1, chain["train"]).compute(idx)
    orig = _boundary(params, chain["plan"][0], chain["states"][0], s1, chain["train"]).compute(idx)
    torch.testing.assert_close(orig.y_img, cur.y_img, rtol=1e-5, atol=1e-6)
    # step 2: block 2 carries step 1's LoRA, so the current model's sandwich [0, 2] differs from the original's
    _, s2 = chain["stores"][1]
    cur = _boundary(chain["params"], chain["plan"][1], chain["states"][1], s2, chain["train"]).compute(idx)
    orig = _boundary(params, chain["plan"][1], chain["states"][1], s2, chain["train"]).compute(idx)
    torch.testing.assert_close(orig.img, cur.img)  # same input x_u
    assert torch.isfinite(orig.y_img).all() and not torch.allclose(orig.y_img, cur.y_img, rtol=1e-3, atol=1e-4)


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


def _lora_is_identity(state: ChainState, blocks: list[int]) -> bool:
    """peft's LoRA changes nothing while every B matrix is zero."""
    names = [n for j in blocks for n in state.lora[j] if "lora_B" in n]
    return bool(names) and all(not state.lora[j][n].any() for j in blocks for n in state.lora[j] if "lora_B" in n)


def test_a_sandwich_whose_training_diverges_keeps_its_least_squares_start(chain):
    """At a rate far too high every held-out check is worse than the start: the state after the step
    holds the solved linear exactly and LoRA that changes nothing, and its record says so."""
    params = tiny_params(**{"sandwich.learning_rate": 1.0, "sandwich.train_steps": 20, "sandwich.eval_every": 5})
    step, (_, store) = chain["plan"][0], chain["stores"][0]
    solved = load_solution(Path("solve1.safetensors"))
    state, record = train_sandwich(params, step, ChainState(), solved, store, chain["train"])
    assert record["best_step"] == 0 and record["holdout_checks"]
    assert all(loss > record["holdout_loss_init"] for _, loss in record["holdout_checks"])
    assert record["holdout_loss_trained"] == record["holdout_loss_init"]
    torch.testing.assert_close(state.linears[3]["joint"][0], solved["joint"][0], rtol=0, atol=0)
    assert _lora_is_identity(state, step.lora_blocks())


def test_a_non_finite_training_loss_stops_training_and_keeps_the_best_state(chain, monkeypatch):
    """A NaN batch loss (bf16 overflow, a diverging rate) is never stepped on: training stops there and
    the best state so far — here the start, no check having run — is what the step keeps."""
    from fastflux_core import sandwich as sandwich_mod

    calls = {"n": 0}
    real = sandwich_mod.micro_step

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(sandwich_mod, "micro_step", poisoned)
    params = tiny_params(**{"sandwich.train_steps": 20, "sandwich.eval_every": 10})
    step, (_, store) = chain["plan"][0], chain["stores"][0]
    solved = load_solution(Path("solve1.safetensors"))
    state, record = train_sandwich(params, step, ChainState(), solved, store, chain["train"])
    assert "sandwich loss at training step 1 is not finite" in record["stopped"] and record["steps_run"] == 1
    assert record["best_step"] == 0 and record["holdout_loss_trained"] == record["holdout_loss_init"]
    torch.testing.assert_close(state.linears[3]["joint"][0], solved["joint"][0], rtol=0, atol=0)
    assert _lora_is_identity(state, step.lora_blocks())


def test_the_automatic_rate_avoids_a_diverging_rate(chain):
    """``learning_rate: auto`` tries each rate from the same start: 1.0 diverges (its held-out loss
    ends above the start's), so it trains with the other — and ends no worse than the start."""
    params = tiny_params(**{"sandwich.learning_rate": "auto", "sandwich.probe_rates": [1e-3, 1.0],
                            "sandwich.probe_steps": 5, "sandwich.train_steps": 20, "sandwich.eval_every": 5})
    step, (_, store) = chain["plan"][0], chain["stores"][0]
    _, record = train_sandwich(params, step, ChainState(), load_solution(Path("solve1.safetensors")), store,
                               chain["train"])
    probe = {p["rate"]: p["holdout_loss"] for p in record["learning_rate_probe"]}
    assert set(probe) == {1e-3, 1.0} and probe[1.0] > record["holdout_loss_init"] and probe[1e-3] < probe[1.0]
    assert record["learning_rate"] == 1e-3
    assert record["holdout_loss_trained"] <= record["holdout_loss_init"]


def _finish_params(**finish):
    return tiny_params(**{"sandwich.train_steps": 100, "sandwich.eval_every": 5,
                          "finish": {"steps": 20, "micro_batch": 8, **finish}})


def test_the_finisher_distils_the_chain_model_towards_the_base_and_never_leaves_it_worse(chain):
    """finish.steps > 0: the model at n = 2 — its linears and LoRA — trained towards the base's outputs
    on step 1's training store; what comes out is never worse on the chain's held-out prompts, and
    at 1.0, which diverges, it is the chain's own model, weight for weight."""
    from fastflux_core.assemble import pruned_model
    from fastflux_core.finish import finished_model, finishing_data

    store, states = chain["stores"][0][1], chain["states"]
    params = _finish_params(learning_rate=1e-3)
    adapter, state, record = finished_model(params, states, 2, finishing_data(params, store, chain["train"]))
    assert record["steps_run"] > 0 and record["holdout_loss_trained"] <= record["holdout_loss_init"]
    assert record["trainable_params"] > 0 and sorted(state.linears) == [1, 3]
    unfinished = pruned_model(params, states, 2)[0].model.state_dict()
    changed = any(not torch.equal(t, unfinished[k]) for k, t in adapter.model.state_dict().items())
    assert changed == (record["best_step"] > 0)  # a finished model only where finishing won on held-out prompts
    bad = _finish_params(learning_rate=1.0, probe_rates=[1.0])
    adapter, _, record = finished_model(bad, states, 2, finishing_data(bad, store, chain["train"]))
    assert record["best_step"] == 0 and record["holdout_loss_trained"] == record["holdout_loss_init"]
    for k, t in adapter.model.state_dict().items():
        torch.testing.assert_close(t, unfinished[k], rtol=0, atol=0, msg=k)


def test_timestep_aware_solve_is_numpy_least_squares_on_x_and_silu_temb(chain):
    """solve.condition: temb — each row's features are [x; silu(temb of its sample); 1], weighted by
    N/k per stream; the solution's weight is [W | U], and it fits the rows no worse than plain BRLL."""
    cal, _ = chain["stores"][0]
    sols, metrics = solve_store(cal, chain["params"].solve.ridge, 7, condition="temb")
    silu = torch.nn.functional.silu(cal.read("temb").float()).double().numpy()  # (samples, D), as the solve takes it
    rows = []
    for s in ("img", "txt"):
        x, r = cal.read(f"block_in_{s}").double().numpy(), cal.read(f"residual_{s}").double().numpy()
        t = silu[np.arange(len(x)) // cal.attrs["sampled"][s]]
        w = np.sqrt(row_weight(cal, s))
        rows.append((np.hstack([x, t, np.ones((len(x), 1))]) * w, r * w))
    x, r = np.vstack([a for a, _ in rows]), np.vstack([b for _, b in rows])
    ridge = chain["params"].solve.ridge * np.mean(np.diag(x.T @ x)[:-1])
    want = np.linalg.solve(x.T @ x + ridge * np.diag([1.0] * (x.shape[1] - 1) + [0.0]), x.T @ r)  # (2D+1, D)
    np.testing.assert_allclose(sols["joint"].weight.numpy(), want[:-1].T, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sols["joint"].bias.numpy(), want[-1], rtol=1e-5, atol=1e-7)
    res = np.linalg.norm(r - x @ want) / np.linalg.norm(r)
    assert metrics["joint"]["relative_residual"] == pytest.approx(res, rel=1e-6)
    assert metrics["joint"]["relative_residual"] <= metrics["joint"]["relative_residual_plain"]


def test_a_timestep_aware_replacement_trains_saves_and_exports(chain, tmp_path):
    """U trains with W and b in the sandwich, goes through the chain state, and the exported model —
    in both numberings — computes what the chain model computes."""
    from fastflux_core.export import load_pruned
    from fastflux_core.chain import load_conditioning
    from fastflux_core.evaluation import call_model
    from fastflux_core.export import merge_lora, to_pruned
    from fastflux_core.pruned_flux import load_contiguous, save_contiguous

    params = tiny_params(**{"sandwich.train_steps": 20, "sandwich.eval_every": 5, "solve.condition": "temb"})
    step, (cal, store) = chain["plan"][0], chain["stores"][0]
    save_solution(tmp_path / "linear.safetensors", solve_store(cal, params.solve.ridge, 7, condition="temb")[0])
    solved, cond = load_solution(tmp_path / "linear.safetensors"), load_conditioning(tmp_path / "linear.safetensors")
    assert set(cond) == {"joint"} and cond["joint"].abs().sum() > 0 and solved["joint"][0].shape == cond["joint"].shape
    state, record = train_sandwich(params, step, ChainState(), solved, store, chain["train"], conditioning=cond)
    assert record["replacement"] == "brll_temb" and sorted(state.temb) == [3]
    if record["best_step"] == 0:  # kept the least-squares start: U as solved
        torch.testing.assert_close(state.temb[3]["joint"], cond["joint"], rtol=0, atol=0)
    state.save(tmp_path / "state")
    loaded = ChainState.load(tmp_path / "state")
    torch.testing.assert_close(loaded.temb[3]["joint"], state.temb[3]["joint"], rtol=0, atol=0)
    adapter = build_chain_model(params, loaded)
    merge_lora(adapter.model)
    x = _inputs(adapter.model)
    want = call_model(adapter.model, x)
    pruned = to_pruned(adapter.model, [3], [], [3])
    pruned.save_pretrained(str(tmp_path / "original"), safe_serialization=True)
    assert load_pruned(tmp_path / "original").config.conditioned_blocks == [3]
    torch.testing.assert_close(call_model(load_pruned(tmp_path / "original"), x), want)
    save_contiguous(pruned, tmp_path / "contiguous")
    config = json.loads((tmp_path / "contiguous" / "config.json").read_text())
    torch.testing.assert_close(call_model(load_contiguous(type(pruned), tmp_path / "contiguous", config, None), x), want)
    with torch.no_grad():  # the timestep term is part of what the model computes
        for lin in pruned.single_transformer_blocks[1].temb_linears.values():
            lin.weight.zero_()
    assert not torch.allclose(call_model(pruned, x), want)


def _inputs(model):
    from fastflux_core.blocks import ModelInputs
    from fastflux_core.codec import latent_ids

    g = torch.Generator().manual_seed(0)
    return ModelInputs(hidden_states=torch.randn(2, 16, 4, generator=g), encoder_hidden_states=torch.randn(2, 8, 384, generator=g),
                       pooled_projections=torch.randn(2, 384, generator=g), timestep=torch.tensor([0.3, 0.8]),
                       img_ids=latent_ids(8, 8), txt_ids=torch.zeros(8, 3), guidance=None)


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

        def on_step(i, batch, x):
            if i == 2:
                seen[batch] = x.hidden_states.float()

        with torch.no_grad():
            sample_latents(model, load_scheduler(params.model), chain["train"], items, params.sampling, 1, 1,
                           progress=False, on_step=on_step)
        return seen

    stored = store.read("latents")[rows].float()
    torch.testing.assert_close(stored, inputs_at_step_2(chain["states"][1]), rtol=1e-5, atol=1e-6)
    assert (stored - inputs_at_step_2(chain["states"][0])).abs().max() > 1e-3  # the base model's differ
