"""Sandwich Training (paper §3.2, Fig. 1 and 3, Eq. 3): repair step k's replacement locally.

Blocks u..d around the replaced block i (see :func:`fastflux_core.chain.sandwich_bounds`) are cut out
of the model as it stands after steps < k. Block i becomes its least-squares linear (stage solve@k);
the unpruned blocks in [u, d] get LoRA (peft); every replaced linear in [u, d] — i's and those of
earlier overlapping steps — is trainable; everything else is frozen. Training maps the captured state
entering B_u to the captured state leaving B_d (the current model's, as in the paper, or the original
model's: ``sandwich.target``), minimising the relative squared error

    L = ‖sandwich(x_u) − y_d‖² / ‖y_d‖²     (both streams)

Data: the *training* prompt set's store (least squares was fitted on the calibration set). A share
``sandwich.holdout`` of the training set's prompts is held out whole — every seed and schedule step of
those prompts — so the held-out loss before (least-squares init, fresh LoRA = no change) and after
training is measured on items no fit and no training step saw. Trainable parameters are kept in
float32 (master copies) even when the frozen model is bfloat16. The new chain state = the previous
state + everything trained here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import trange

from fastflux_core.adapter import BlockAdapter, BlockState
from fastflux_core.chain import ChainState, PlanStep, build_chain_model
from fastflux_core.errors import FastFluxError
from fastflux_core.integrity import require_finite
from fastflux_core.lora import lora_parameters, lora_tensors
from fastflux_core.params import Params, SandwichParams
from fastflux_core.prompts import derive_seed
from fastflux_core.replacement import LinearReplacement
from fastflux_core.store import StoreReader


class SandwichData:
    """Captured (input state, target state) pairs of one sandwich. Held in memory when they fit in
    ``memory_gb`` (the default model: always); otherwise read from the store batch by batch."""

    def __init__(self, store: StoreReader, target: str, device: torch.device, dtype: torch.dtype,
                 memory_gb: float = 4.0):
        self.store, self.device, self.dtype = store, device, dtype
        self.out_name = "sandwich_out" if target == "current" else "original_out"
        if f"{self.out_name}_img" not in store.group:
            raise FastFluxError(f"{store.path} has no {self.out_name} states: re-run capture with sandwich.target={target}")
        self.n = store.n_samples
        self.img_ids = store.read("img_ids").to(device, dtype)
        self.txt_ids = store.read("txt_ids").to(device, dtype)
        self.names = ["sandwich_in_img", "sandwich_in_txt", "temb", f"{self.out_name}_img", f"{self.out_name}_txt"]
        nbytes = sum(4 * store.array(n).size for n in self.names)
        self.cache = {n: store.read(n) for n in self.names} if nbytes <= memory_gb * 2**30 else None

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Inputs {img, txt, temb} and targets (img, txt) for sample indices ``idx``."""
        idx = torch.sort(idx).values

        def get(name: str) -> torch.Tensor:
            t = self.cache[name][idx] if self.cache is not None else self.store.read_samples(name, idx.numpy())
            return t.to(self.device, self.dtype)

        x = {"img": get("sandwich_in_img"), "txt": get("sandwich_in_txt"), "temb": get("temb")}
        return x, (get(f"{self.out_name}_img"), get(f"{self.out_name}_txt"))


def _run(adapter: BlockAdapter, x: dict, rotary, u: int, d: int) -> BlockState:
    return adapter.run(BlockState(x["img"], x["txt"], x["temb"], rotary), u, d + 1)


def _rel_err(out: BlockState, y: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared error, squared target norm) summed over both streams, in float32."""
    (img, txt), (y_img, y_txt) = (out.hidden_states.float(), out.encoder_hidden_states.float()), (y[0].float(), y[1].float())
    num = ((img - y_img) ** 2).sum() + ((txt - y_txt) ** 2).sum()
    den = (y_img**2).sum() + (y_txt**2).sum()
    return num, den


@torch.no_grad()
def held_out_loss(adapter: BlockAdapter, data: SandwichData, idx: torch.Tensor, rotary, u: int, d: int,
                  batch_size: int) -> float:
    num = den = 0.0
    for s in range(0, len(idx), batch_size):
        x, y = data.batch(idx[s : s + batch_size])
        n_, d_ = _rel_err(_run(adapter, x, rotary, u, d), y)
        num, den = num + float(n_), den + float(d_)
    return num / max(den, 1e-30)


@dataclass(frozen=True)
class Split:
    """Sample indices of the training store: trained on, and held out (whole prompts)."""

    train: torch.Tensor  # (n_train,) sample indices
    holdout: torch.Tensor  # (n_hold,) sample indices
    holdout_prompts: list[str]


def holdout_split(store: StoreReader, share: float, seed: int) -> Split:
    """Hold out ``round(share · prompts)`` (≥ 1) of the store's prompts with all their samples."""
    prompts = store.attrs["prompts"]
    n_hold = max(1, round(share * len(prompts)))
    if n_hold >= len(prompts):
        raise FastFluxError(f"sandwich.holdout={share} holds out all {len(prompts)} training prompts: lower it or "
                            f"add prompts to {store.attrs['prompt_set']}")
    held = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:n_hold]
    of_sample = store.read("prompt")  # (n,) prompt index per sample
    is_held = torch.isin(of_sample, held)
    return Split(torch.nonzero(~is_held).flatten(), torch.nonzero(is_held).flatten(),
                 [prompts[int(j)] for j in sorted(held.tolist())])


def prepare_sandwich(params: Params, step: PlanStep, state: ChainState,
                     solved: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[BlockAdapter, list[torch.nn.Parameter]]:
    """The chain model after steps < k with block i as its least-squares linear and fresh LoRA on the
    sandwich's unpruned blocks; returns it and its trainable parameters (float32, all else frozen)."""
    i = step.block
    adapter = build_chain_model(params, state, new_lora=step.lora_blocks())
    model = adapter.model
    p0 = next(model.parameters())
    rep = LinearReplacement(model.inner_dim, adapter.blocks[i].kind).to(p0.device, torch.float32)
    for s, (w, b) in solved.items():
        rep.set_affine(s, w, b)
    adapter.swap(i, rep)
    model.requires_grad_(False)
    train_params = lora_parameters(adapter, step.lora_blocks())
    for j in step.linear_blocks():
        train_params += list(adapter.block(j).parameters())
    for p in train_params:
        p.data = p.data.float()  # fp32 master copy; forwards cast to the frozen model's dtype
        p.requires_grad_(True)
    return adapter, train_params


def fit_sandwich(adapter: BlockAdapter, train_params: list[torch.nn.Parameter], data: SandwichData, split: Split,
                 u: int, d: int, cfg: SandwichParams, seed: int) -> dict:
    """AdamW on the relative sandwich loss over ``split.train``; held-out loss before and after."""
    model = adapter.model
    rotary = model.pos_embed(torch.cat([data.txt_ids, data.img_ids]))
    g = torch.Generator().manual_seed(seed)
    before = held_out_loss(adapter, data, split.holdout, rotary, u, d, cfg.batch_size)
    opt = torch.optim.AdamW(train_params, lr=cfg.learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for _ in trange(cfg.train_steps, desc="sandwich", unit="step"):
        idx = split.train[torch.randint(len(split.train), (min(cfg.batch_size, len(split.train)),), generator=g)]
        x, y = data.batch(idx)
        num, den = _rel_err(_run(adapter, x, rotary, u, d), y)
        loss = require_finite(num / den.clamp(min=1e-30), f"sandwich loss at training step {len(losses)} "
                              f"(lower sandwich.learning_rate or use model.dtype float32)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train_params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    after = held_out_loss(adapter, data, split.holdout, rotary, u, d, cfg.batch_size)
    return {"holdout_loss_init": before, "holdout_loss_trained": after,
            "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None}


def train_sandwich(params: Params, step: PlanStep, state: ChainState,
                   solved: dict[str, tuple[torch.Tensor, torch.Tensor]], store: StoreReader) -> tuple[ChainState, dict]:
    """Train step k's sandwich on the training store; return the new chain state and a record."""
    cfg = params.sandwich
    i, (u, d) = step.block, step.sandwich
    lora_blocks, linear_blocks = step.lora_blocks(), step.linear_blocks()
    adapter, train_params = prepare_sandwich(params, step, state, solved)
    p0 = next(adapter.model.parameters())
    data = SandwichData(store, cfg.target, p0.device, p0.dtype)
    split = holdout_split(store, cfg.holdout, derive_seed(params.seed, "sandwich-holdout", step.k))
    losses = fit_sandwich(adapter, train_params, data, split, u, d, cfg,
                          derive_seed(params.seed, "sandwich-batches", step.k))

    kind = adapter.blocks[i].kind
    new = ChainState(step=step.k, kinds=dict(state.kinds), linears=dict(state.linears),
                     lora={j: t for j, t in state.lora.items() if j not in step.replaced},
                     lora_config={"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha}, history=list(state.history))
    new.kinds[i] = kind
    for j in linear_blocks:
        blk = adapter.block(j)
        new.linears[j] = {s: (lin.weight.detach().float().cpu(), lin.bias.detach().float().cpu())
                          for s, lin in blk.linears.items()}
    new.lora.update({j: {n: t.float() for n, t in named.items()} for j, named in lora_tensors(adapter, lora_blocks).items()})
    seeds = store.read("seed")
    record = {
        "step": step.k, "block": i, "sandwich": [u, d], "lora_blocks": lora_blocks, "linear_blocks": linear_blocks,
        "trainable_params": sum(p.numel() for p in train_params), "train_samples": len(split.train),
        "holdout_samples": len(split.holdout), "holdout_prompts": len(split.holdout_prompts),
        "holdout_items": len({int(v) for v in seeds[split.holdout]}), **losses, "target": cfg.target,
    }
    new.history.append(record)
    return new, record
