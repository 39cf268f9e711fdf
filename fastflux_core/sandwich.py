"""Sandwich Training (paper §3.2, Fig. 1 and 3, Eq. 3): repair step k's replacement locally.

Blocks u..d around the replaced block i (see :func:`fastflux_core.chain.sandwich_bounds`) are cut out
of the model as it stands after steps < k. Block i becomes its least-squares linear (stage solve@k);
the unpruned blocks in [u, d] get LoRA (peft); every replaced linear in [u, d] — i's and those of
earlier overlapping steps — is trainable; everything else is frozen. Training maps the captured state
entering B_u to the captured state leaving B_d (the current model's, as in the paper, or the original
model's: ``sandwich.target``), minimising the relative squared error

    L = ‖sandwich(x_u) − y_d‖² / ‖y_d‖²     (both streams)

The held-out share of captured samples measures the loss before (least-squares init, fresh LoRA = no
change) and after training. The new chain state = the previous state + everything trained here.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import trange

from fastflux_core.adapter import BlockAdapter, BlockState
from fastflux_core.chain import ChainState, PlanStep, build_chain_model
from fastflux_core.errors import FastFluxError
from fastflux_core.lora import lora_parameters, lora_tensors
from fastflux_core.params import Params
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
    """(squared error, squared target norm) summed over both streams."""
    num = ((out.hidden_states - y[0]) ** 2).sum() + ((out.encoder_hidden_states - y[1]) ** 2).sum()
    den = (y[0] ** 2).sum() + (y[1] ** 2).sum()
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


def train_sandwich(params: Params, step: PlanStep, state: ChainState,
                   solved: dict[str, tuple[torch.Tensor, torch.Tensor]], store: StoreReader) -> tuple[ChainState, dict]:
    """Train step k's sandwich; return the new chain state and a record (losses, sizes, seconds)."""
    t0 = time.perf_counter()
    cfg = params.sandwich
    i, (u, d) = step.block, step.sandwich
    lora_blocks, linear_blocks = step.lora_blocks(), step.linear_blocks()
    adapter = build_chain_model(params, state, new_lora=lora_blocks)
    model = adapter.model
    p0 = next(model.parameters())
    device, dtype = p0.device, p0.dtype

    kind = adapter.blocks[i].kind
    rep = LinearReplacement(model.inner_dim, kind).to(device, dtype)
    for s, (w, b) in solved.items():
        rep.set_affine(s, w, b)
    adapter.swap(i, rep)

    model.requires_grad_(False)
    train_params = lora_parameters(adapter, lora_blocks)
    for j in linear_blocks:
        train_params += list(adapter.block(j).parameters())
    for p in train_params:
        p.requires_grad_(True)

    data = SandwichData(store, cfg.target, device, dtype)
    rotary = model.pos_embed(torch.cat([data.txt_ids, data.img_ids]))
    g = torch.Generator().manual_seed(params.seed + 104729 * step.k)
    perm = torch.randperm(data.n, generator=g)
    n_hold = max(1, int(round(cfg.holdout * data.n)))
    hold, train = perm[:n_hold], perm[n_hold:]
    before = held_out_loss(adapter, data, hold, rotary, u, d, cfg.batch_size)

    opt = torch.optim.AdamW(train_params, lr=cfg.learning_rate, weight_decay=0.0)
    model.train()
    losses = []
    for _ in trange(cfg.train_steps, desc=f"sandwich {step.k}", unit="step"):
        idx = train[torch.randint(len(train), (min(cfg.batch_size, len(train)),), generator=g)]
        x, y = data.batch(idx)
        num, den = _rel_err(_run(adapter, x, rotary, u, d), y)
        loss = num / den.clamp(min=1e-30)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train_params, 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    after = held_out_loss(adapter, data, hold, rotary, u, d, cfg.batch_size)

    new = ChainState(step=step.k, kinds=dict(state.kinds), linears=dict(state.linears),
                     lora={j: t for j, t in state.lora.items() if j not in step.replaced},
                     lora_config={"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha}, history=list(state.history))
    new.kinds[i] = kind
    for j in linear_blocks:
        blk = adapter.block(j)
        new.linears[j] = {s: (lin.weight.detach().float().cpu(), lin.bias.detach().float().cpu())
                          for s, lin in blk.linears.items()}
    new.lora.update(lora_tensors(adapter, lora_blocks))
    record = {
        "step": step.k, "block": i, "sandwich": [u, d], "lora_blocks": lora_blocks, "linear_blocks": linear_blocks,
        "trainable_params": sum(p.numel() for p in train_params), "train_samples": len(train),
        "holdout_samples": len(hold), "holdout_loss_init": before, "holdout_loss_trained": after,
        "train_loss_first": losses[0] if losses else None, "train_loss_last": losses[-1] if losses else None,
        "target": cfg.target, "seconds": round(time.perf_counter() - t0, 2),
    }
    new.history.append(record)
    return new, record
