"""Eq. 3 sandwich bounds, the plan, and chain states through safetensors."""

import pytest
import torch

from fastflux_core.chain import ChainState, PlanStep, make_plan, sandwich_bounds
from fastflux_core.errors import FastFluxError


@pytest.mark.parametrize(
    "i, replaced, width, want",
    [
        (5, {5}, 3, (4, 6)),  # non-overlap: immediate neighbours (Eq. 3)
        (5, {4, 5}, 3, (3, 6)),  # neighbour below already replaced: search further down
        (5, {4, 5, 6, 7}, 3, (3, 8)),  # both sides replaced
        (0, {0}, 3, (0, 1)),  # first block: nothing below
        (9, {9}, 3, (8, 9)),  # last block: nothing above
        (9, {8, 9}, 3, (7, 9)),
        (8, {8, 9}, 3, (7, 9)),  # replaced last block above and nothing unpruned: runs to the end
        (1, {0, 1}, 3, (0, 2)),
        (5, {5}, 1, (5, 5)),  # width 1: no LoRA neighbours
        (5, {5}, 5, (3, 7)),  # width 5: two unpruned neighbours each side
        (5, {3, 5}, 5, (2, 7)),
        (1, {1}, 5, (0, 3)),  # only one block below exists
    ],
)
def test_sandwich_bounds(i, replaced, width, want):
    assert sandwich_bounds(i, replaced, n_blocks=10, width=width) == want


def test_sandwich_crossing_the_double_single_boundary():
    # FLUX.1-dev: blocks 0..18 double, 19..56 single; replacing 19 with 18 already replaced
    step = make_plan([18, 19], 2, 57, 3)[1]
    assert step.sandwich == (17, 20)
    assert step.lora_blocks() == [17, 20] and step.linear_blocks() == [18, 19]


def test_plan_prefixes_and_json_round_trip():
    plan = make_plan([4, 2, 3, 0, 1], 3, 5, 3)
    assert [s.block for s in plan] == [4, 2, 3]
    assert plan[2].replaced_before == (4, 2) and plan[2].sandwich == (1, 4)  # 4 is replaced and last
    assert PlanStep.from_json(plan[2].to_json()) == plan[2]
    with pytest.raises(FastFluxError):
        make_plan([0, 1], 3, 5, 3)


def test_chain_state_round_trip(tmp_path):
    s = ChainState(step=2, kinds={3: "double", 7: "single"})
    s.linears = {3: {"img": (torch.randn(4, 4), torch.randn(4)), "txt": (torch.randn(4, 4), torch.randn(4))},
                 7: {"joint": (torch.randn(4, 4), torch.randn(4))}}
    s.lora = {2: {"attn.to_q.lora_A.weight": torch.randn(2, 4)}}
    s.history = [{"step": 1}]
    s.save(tmp_path)
    t = ChainState.load(tmp_path)
    assert t.step == 2 and t.kinds == s.kinds and t.history == s.history
    torch.testing.assert_close(t.linears[3]["txt"][0], s.linears[3]["txt"][0])
    torch.testing.assert_close(t.linears[7]["joint"][1], s.linears[7]["joint"][1])
    torch.testing.assert_close(t.lora[2]["attn.to_q.lora_A.weight"], s.lora[2]["attn.to_q.lora_A.weight"])
    with pytest.raises(FastFluxError):
        ChainState.load(tmp_path / "missing")


def _state(step, linears, lora, tag):
    s = ChainState(step=step, kinds={i: "single" for i in linears})
    s.linears = {i: {"joint": (torch.full((2, 2), float(tag)), torch.zeros(2))} for i in linears}
    s.lora = {j: {"a": torch.full((1,), float(tag))} for j in lora}
    return s


def test_state_for_steps_reuse_takes_latest_versions():
    from fastflux_core.chain import state_for_steps

    states = [ChainState(), _state(1, [5], [4, 6], 1), _state(2, [5, 6], [4, 7], 2), _state(3, [5, 6, 7], [4, 8], 3)]
    plain = state_for_steps(states, 1, reuse=False)
    assert plain is states[1]
    reused = state_for_steps(states, 1, reuse=True)
    assert sorted(reused.linears) == [5] and sorted(reused.lora) == [4, 6]  # the 1-step model's components
    assert reused.linears[5]["joint"][0][0, 0] == 3  # linear 5: trained on through step 3
    assert reused.lora[4]["a"][0] == 3  # adapter on 4: still unpruned at step 3
    assert reused.lora[6]["a"][0] == 1  # block 6 was replaced at step 2: its adapter's last version is step 1's
    two = state_for_steps(states, 2, reuse=True)
    assert sorted(two.linears) == [5, 6] and two.lora[7]["a"][0] == 2 and two.linears[6]["joint"][0][0, 0] == 3
    with pytest.raises(FastFluxError):
        state_for_steps(states, 4, reuse=True)
