"""Distillation's two objectives (fastflux_core/distill.py): the local one is each block's error given
the base's input to it, and training on it lowers it on held-out samples without touching the base."""

from __future__ import annotations

import copy

import torch
from tiny import tiny_transformer

from fastflux_core.blocks import ModelInputs
from fastflux_core.distill import distill, local_den, local_err, teacher_states
from fastflux_core.families import adapter_for
from fastflux_core.params import SandwichParams
from fastflux_core.training import Split


class FakeInputs:
    """The interface distill reads (CapturedInputs.batches): random transformer inputs of 24 samples."""

    def __init__(self, n: int = 24, n_img: int = 16, n_txt: int = 4):
        g = torch.Generator().manual_seed(0)
        self.x = ModelInputs(torch.randn(n, n_img, 16, generator=g), torch.randn(n, n_txt, 32, generator=g),
                             torch.randn(n, 32, generator=g), torch.rand(n, generator=g),
                             torch.stack([torch.zeros(n_img), torch.arange(n_img) // 4, torch.arange(n_img) % 4], 1),
                             torch.zeros(n_txt, 3), torch.full((n,), 3.5), (8, 8))

    def batches(self, idx: torch.Tensor, micro_batch: int):
        from fastflux_core.distill import take

        for mb in torch.sort(idx).values.split(micro_batch):
            yield take(self.x, mb)


def test_local_error_is_each_blocks_own_given_the_bases_input():
    teacher = adapter_for(tiny_transformer(0))
    student = adapter_for(copy.deepcopy(teacher.model))
    x = FakeInputs().x
    states = teacher_states(teacher, x, torch.device("cpu"))
    assert len(states) == len(teacher.blocks) + 1
    with torch.no_grad():
        assert float(local_err(student, states)) == 0.0  # the base itself
        blk = student.block(3)  # a single block: perturb it, and only its term appears
        blk.proj_out.weight.add_(0.01 * torch.randn_like(blk.proj_out.weight))
        got = float(local_err(student, states))
        out = student.run(states[3], 3, 4)
        want = sum(float(((a.float() - b.float()) ** 2).sum()) for a, b in
                   ((out.hidden_states, states[4].hidden_states), (out.encoder_hidden_states, states[4].encoder_hidden_states)))
    assert got > 0 and abs(got - want) <= 1e-5 * want
    den = float(local_den(states))
    assert abs(den - sum(float((s.hidden_states ** 2).sum() + (s.encoder_hidden_states ** 2).sum()) for s in states[1:])) <= 1e-5 * den


def test_local_distillation_lowers_the_held_out_local_loss_and_keeps_the_teacher():
    teacher = adapter_for(tiny_transformer(0))
    before_teacher = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    student_model = copy.deepcopy(teacher.model)
    with torch.no_grad():
        for p in student_model.single_transformer_blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = adapter_for(student_model)
    train = [p for p in student_model.parameters()]
    for p in train:
        p.requires_grad_(True)
    split = Split(torch.arange(16), torch.arange(16, 24), ["held out"])
    cfg = SandwichParams(train_steps=30, batch_size=8, micro_batch=4, round_samples=16, eval_every=10, patience=None)
    rec = distill(student, teacher, train, FakeInputs(), split, 30, cfg, 4, 1e-3, [1e-3], 0, torch.device("cpu"),
                  objective="local")
    assert rec["objective"] == "local" and rec["steps_run"] == 30
    assert rec["holdout_loss_trained"] < rec["holdout_loss_init"]
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in before_teacher.items())
