"""The optional global finisher (beyond the paper): the pruned model at a ratio, distilled towards its base.

Sandwich Training repairs each replacement locally, towards the model it came from; errors of several
replacements still add up through the model. The finisher trains, after the chain and for the model
at ``ratio`` only, what the chain trained — every replaced block's linear and the LoRA of its
sandwiches' neighbours — towards the base model's *output* (:mod:`fastflux_core.distill`: the same
objective the L1 baseline is fine-tuned with) for ``finish.steps`` AdamW steps of
``sandwich.batch_size`` samples, keeping the state with the lowest held-out loss (the chain's model
included, so it never leaves the model worse on held-out prompts). Data: the training store of chain
step 1 (the base model's own trajectories on the training prompts), with the sandwiches' held-out
prompts. ``finish.steps: 0`` (the default) is the paper's method.

Cost: a forward and backward of the whole pruned model and a forward of the base per sample — both
models on the device (for FLUX.1-dev about 45 GB of bf16 weights; at 1024², ``finish.micro_batch: 1``,
without gradient checkpointing the budget command's ``assemble (finisher)`` row measures a peak of
44.7 GiB — an 80 GB card; the peak grows with the micro-batch: :func:`fastflux_core.stage_peaks.measure_distill`). Whatever ``finish.steps`` is, the baseline
(:mod:`fastflux_core.width`) gets the same number of steps on top of the sandwiches'.
"""

from __future__ import annotations

import torch
from torch import nn

from fastflux_core.blocks import BlockAdapter
from fastflux_core.chain import ChainState, state_for_steps
from fastflux_core.chain_model import build_chain_model
from fastflux_core.distill import distill
from fastflux_core.export import merge_lora
from fastflux_core.families import adapter_for
from fastflux_core.lora import lora_parameters
from fastflux_core.params import Params
from fastflux_core.placement import resolve_device
from fastflux_core.prompts import PromptEmbeds, derive_seed
from fastflux_core.source import empty_base_model, load_transformer
from fastflux_core.store import StoreReader
from fastflux_core.training import CapturedInputs, Split, chain_holdout


def finishing_parameters(adapter: BlockAdapter, state: ChainState) -> list[nn.Parameter]:
    """What the chain trained and the finisher trains on: the replaced blocks' linears and the LoRA
    adapters present (a deleted block has neither)."""
    params = lora_parameters(adapter, sorted(state.lora))
    for i in sorted(state.linears):
        params += list(adapter.block(i).parameters())
    return params


def finishing_data(params: Params, store: StoreReader, embeds: PromptEmbeds) -> tuple[CapturedInputs, Split]:
    """The captured transformer inputs of ``store`` (read on the host) and the chain's held-out split
    of its prompts (which no sandwich trained on; the L1 baseline holds out the same)."""
    model = empty_base_model(params.model).to(getattr(torch, params.model.dtype))  # what CapturedInputs reads: dtype, guidance
    inputs = CapturedInputs(store, embeds, model, torch.device("cpu"))
    return inputs, chain_holdout(store, params.sandwich.holdout, params.seed)


def finished_model(params: Params, states: list[ChainState], n: int,
                   training: tuple[CapturedInputs, Split] | None) -> tuple[BlockAdapter, ChainState, dict | None]:
    """The chain model with ``n`` blocks replaced (:func:`~fastflux_core.chain.state_for_steps`),
    finished when ``finish.steps`` > 0 on ``training`` (the captured inputs and their held-out split),
    LoRA merged; and the finisher's record (None when it did not run)."""
    state = state_for_steps(states, n, params.sandwich.reuse)
    adapter = build_chain_model(params, state)
    record = None
    if params.finish.steps and n and training is not None:
        record = _finish(params, adapter, state, n, *training)
    merge_lora(adapter.model)
    return adapter, state, record


def _finish(params: Params, adapter: BlockAdapter, state: ChainState, n: int, inputs: CapturedInputs,
            split: Split) -> dict:
    cfg = params.finish
    device = resolve_device(params.model.device)
    model = adapter.model
    model.requires_grad_(False)
    train_params = finishing_parameters(adapter, state)
    dtypes = [p.dtype for p in train_params]
    for p in train_params:
        p.data = p.data.float()  # fp32 masters, as in a sandwich
        p.requires_grad_(True)
    teacher = adapter_for(load_transformer(params.model))
    teacher.model.to(device)
    model.to(device)
    record = distill(adapter, teacher, train_params, inputs, split, cfg.steps, params.sandwich, cfg.micro_batch,
                     cfg.learning_rate, cfg.probe_rates, derive_seed(params.seed, "finish", n), device)
    model.to("cpu")
    del teacher
    for p, dtype in zip(train_params, dtypes):
        p.requires_grad_(False)
        p.data = p.data.to(dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**record, "steps": cfg.steps, "batch_size": params.sandwich.batch_size,
            "trainable_params": sum(p.numel() for p in train_params)}
