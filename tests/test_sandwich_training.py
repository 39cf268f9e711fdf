"""Sandwich Training (Eq. 3) on the chain's stores: held-out prompts stay out of training, training
beats the least-squares start there or keeps it (a diverging rate, a non-finite loss, the automatic
rate's probe), only the trainable parameters move, LoRA's initialisation is seeded, ``sandwich.train:
false`` and deletion + ST, and the original-model target. The chain is tests/chain_fixture.py's."""

from pathlib import Path

import torch
from chain_fixture import boundary_states, store_items
from tiny import tiny_params

from fastflux_core.boundary import BoundaryStates
from fastflux_core.chain import ChainState, load_solution
from fastflux_core.chain_model import build_chain_model
from fastflux_core.lora import lora_tensors
from fastflux_core.sandwich import fit_sandwich, prepare_sandwich, train_sandwich
from fastflux_core.solve import replacement_for
from fastflux_core.training import holdout_split


def test_held_out_items_are_in_no_training_batch_and_no_least_squares_fit(chain, monkeypatch):
    params, step = chain["params"], chain["plan"][0]
    cal, train = chain["stores"][0]
    split = holdout_split(train, params.sandwich.holdout, seed=0)
    assert len(split.holdout_prompts) == 2  # 20 % of 10 prompts, all their seeds and schedule steps
    held = {(train.attrs["prompts"][int(train.read("prompt")[i])], int(train.read("seed")[i])) for i in split.holdout}
    assert len(held) == 2 * 4 and not held & store_items(cal)
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


def test_original_target_comes_from_the_unpruned_blocks(chain):
    params = tiny_params(**{"sandwich.target": "original"})
    _, s1 = chain["stores"][0]
    idx = torch.arange(0, s1.n_samples, 5)
    # step 1: nothing modified yet, so the original and the current sandwich outputs agree
    cur = boundary_states(chain["params"], chain["plan"][0], chain["states"][0], s1, chain["train"]).compute(idx)
    orig = boundary_states(params, chain["plan"][0], chain["states"][0], s1, chain["train"]).compute(idx)
    torch.testing.assert_close(orig.y_img, cur.y_img, rtol=1e-5, atol=1e-6)
    # step 2: block 2 carries step 1's LoRA, so the current model's sandwich [0, 2] differs from the original's
    _, s2 = chain["stores"][1]
    cur = boundary_states(chain["params"], chain["plan"][1], chain["states"][1], s2, chain["train"]).compute(idx)
    orig = boundary_states(params, chain["plan"][1], chain["states"][1], s2, chain["train"]).compute(idx)
    torch.testing.assert_close(orig.img, cur.img)  # same input x_u
    assert torch.isfinite(orig.y_img).all() and not torch.allclose(orig.y_img, cur.y_img, rtol=1e-3, atol=1e-4)


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
