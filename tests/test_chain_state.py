"""The chain's state across steps: overlapping and edge sandwiches, linears and LoRA saved and loaded
back, a timestep-aware replacement through training, saving and export, and the finisher that never
leaves the chain's model worse. The chain is tests/chain_fixture.py's."""

import json

import torch
from tiny import tiny_params

from fastflux_core.chain import ChainState, load_solution
from fastflux_core.chain_model import build_chain_model
from fastflux_core.lora import lora_tensors
from fastflux_core.sandwich import train_sandwich
from fastflux_core.solve import save_solution, solve_store


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


def test_a_timestep_aware_replacement_trains_saves_and_exports(chain, tmp_path):
    """U trains with W and b in the sandwich, goes through the chain state, and the exported model —
    in both numberings — computes what the chain model computes."""
    from fastflux_core.chain import load_conditioning
    from fastflux_core.evaluation import call_model
    from fastflux_core.export import load_pruned, merge_lora, to_pruned
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
