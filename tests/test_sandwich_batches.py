"""Sandwich Training's memory devices change nothing but memory: micro-batches with gradient
accumulation give the whole batch's gradient, diffusers' gradient checkpointing gives the same
gradient, and rounds compute each training sample's boundary states exactly once."""

import pytest
import torch
from tiny import tiny_transformer

from fastflux_core.blocks import BlockState
from fastflux_core.flux import FluxAdapter
from fastflux_core.pruned_flux import LinearReplacement
from fastflux_core.boundary import Boundary, _sq_err, run_sandwich
from fastflux_core.training import rounds


def _setup(checkpointing: bool):
    torch.manual_seed(0)
    adapter = FluxAdapter(tiny_transformer(0))
    adapter.model.requires_grad_(False)
    rep = LinearReplacement(adapter.model.inner_dim, "single")
    rep.set_affine("joint", torch.randn(32, 32) * 0.1, torch.randn(32) * 0.1)
    adapter.swap(3, rep)
    trainable = list(rep.parameters()) + list(adapter.block(2).attn.to_q.parameters())
    for p in trainable:
        p.requires_grad_(True)
    if checkpointing:
        adapter.model.enable_gradient_checkpointing()
    g = torch.Generator().manual_seed(1)
    n = 10
    b = Boundary(torch.randn(n, 16, 32, generator=g), torch.randn(n, 8, 32, generator=g), torch.randn(n, 32, generator=g),
                 torch.randn(n, 16, 32, generator=g), torch.randn(n, 8, 32, generator=g))
    rotary = adapter.model.pos_embed(torch.zeros(24, 3))
    return adapter, trainable, b, rotary


def _grads(checkpointing: bool, micro_batch: int) -> list[torch.Tensor]:
    """Gradient of the relative error over all 10 samples, accumulated over micro-batches."""
    adapter, trainable, b, rotary = _setup(checkpointing)
    adapter.model.train()
    pick = torch.arange(len(b))
    den = b.target_norm(pick)
    for mb in pick.split(micro_batch):
        x, y = b.take(mb, torch.device("cpu"))
        (_sq_err(run_sandwich(adapter, x, rotary, 2, 4), y) / den).backward()
    return [p.grad.clone() for p in trainable]


@pytest.mark.parametrize("micro_batch", [1, 3, 4])
def test_micro_batches_accumulate_the_whole_batch_gradient(micro_batch):
    for a, b in zip(_grads(False, 10), _grads(False, micro_batch)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_gradient_and_is_used(monkeypatch):
    adapter, *_ = _setup(True)
    calls = []
    real = adapter.model._gradient_checkpointing_func
    monkeypatch.setattr(adapter.model, "_gradient_checkpointing_func", lambda *a: (calls.append(1), real(*a))[1])
    _, _, b, rotary = _setup(False)
    x, _ = b.take(torch.arange(2), torch.device("cpu"))
    with torch.enable_grad():
        adapter.run(BlockState(x["img"], x["txt"], x["temb"], rotary), 2, 5)
    assert len(calls) == 3  # one checkpointed call per block of the sandwich
    for a, c in zip(_grads(False, 4), _grads(True, 4)):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)


def test_rounds_cover_every_training_sample_once_and_share_the_steps():
    train = torch.tensor([3, 4, 5, 8, 9, 10, 11, 20, 21])
    plan = rounds(train, 10, 4, torch.Generator().manual_seed(0))
    assert [len(c) for c, _ in plan] == [4, 4, 1] and sum(n for _, n in plan) == 10
    assert sorted(torch.cat([c for c, _ in plan]).tolist()) == train.tolist()
    assert len(rounds(train, 10, 100, torch.Generator().manual_seed(0))) == 1  # all fit: one round, iid batches
