"""The sandwich's boundary (paper Eq. 3): the state entering block u and the state leaving block d,
and the sandwich u..d as one trainable module.

Capture stored each training sample's transformer inputs (noisy latent, timestep, guidance, prompt);
the boundary states are recomputed here on the device — x_u = blocks 0..u-1 of the current model,
y_d = a frozen copy of its blocks u..d (or the base model's) on x_u — as storing them would take
116 GB per step at FLUX.1-dev scale (see :mod:`fastflux_core.capture`). Both are exact: nothing
before u is trained. :class:`BoundaryStates` computes them for some samples, :class:`Boundary` holds
them on the host; :func:`micro_step` is the training forward of one micro-batch (relative squared
error, both streams; padded text, which the model never reads, counts in neither),
:func:`rank_micro_batches` a rank's share of a batch. Stage sandwich's loop
(:mod:`fastflux_core.sandwich`) and the budget's measurement of it use the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastflux_core.blocks import BlockAdapter, BlockState
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.stage import World
from fastflux_core.store import StoreReader
from fastflux_core.training import CapturedInputs


@dataclass(frozen=True)
class Boundary:
    """Boundary states of some samples, on the host in the model's dtype."""

    img: torch.Tensor  # (n, N_img, D)  x_u, image stream
    txt: torch.Tensor  # (n, N_txt, D)  x_u, text stream
    temb: torch.Tensor  # (n, D)
    y_img: torch.Tensor  # (n, N_img, D)  y_d, image stream
    y_txt: torch.Tensor  # (n, N_txt, D)  y_d, text stream
    mask: torch.Tensor | None = None  # (n, N_txt) bool, False at padded text (Qwen-Image); None: nothing padded

    def __len__(self) -> int:
        return self.img.shape[0]

    def target_norm(self, idx: torch.Tensor) -> torch.Tensor:
        """‖y_d‖² over samples ``idx``, both streams (unpadded text), float32."""
        mask = None if self.mask is None else self.mask[idx]
        return (self.y_img[idx].float() ** 2).sum() + _unpadded(self.y_txt[idx].float() ** 2, mask).sum()

    def sample_norms(self) -> torch.Tensor:
        """(n,) ‖y_d‖² of each sample, both streams (unpadded text), float32."""
        return (self.y_img.float() ** 2).flatten(1).sum(1) + _unpadded(self.y_txt.float() ** 2, self.mask).flatten(1).sum(1)

    def take(self, idx: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """Inputs {img, txt, temb, mask} and targets (img, txt) of samples ``idx`` on ``device``; the text
        mask is None where none of them is padded, as the model's forward passes it."""
        mask = None if self.mask is None or bool(self.mask[idx].all()) else self.mask[idx].to(device)
        x = {"img": self.img[idx].to(device), "txt": self.txt[idx].to(device), "temb": self.temb[idx].to(device),
             "mask": mask}
        return x, (self.y_img[idx].to(device), self.y_txt[idx].to(device))


class BoundaryStates:
    """Recomputes sandwich boundary states from captured transformer inputs (the training store)."""

    def __init__(self, store: StoreReader, embeds: PromptEmbeds, adapter: BlockAdapter, target: list[nn.Module],
                 u: int, micro_batch: int, device: torch.device):
        self.inputs = CapturedInputs(store, embeds, adapter.model, device)
        self.adapter, self.target, self.u, self.micro_batch, self.device = adapter, target, u, micro_batch, device
        self.rotary = adapter.rotary(self.inputs.txt_ids, self.inputs.img_ids)  # FLUX's; SD3: None

    @torch.no_grad()
    def compute(self, idx: torch.Tensor) -> Boundary:
        """x_u and y_d of samples ``idx`` (store order), computed in micro-batches on the device."""
        parts: list[tuple[torch.Tensor, ...]] = []
        for inputs in self.inputs.batches(idx, self.micro_batch):
            x = self.adapter.run(self.adapter.embed(inputs), 0, self.u)
            y = self.adapter.run_modules(self.target, x, self.u)
            mask = x.text_mask if x.text_mask is not None else torch.ones(x.encoder_hidden_states.shape[:2], dtype=torch.bool)
            parts.append(tuple(t.cpu() for t in (x.hidden_states, x.encoder_hidden_states, x.temb,
                                                  y.hidden_states, y.encoder_hidden_states, mask)))
        *states, mask = (torch.cat(ts) for ts in zip(*parts))
        return Boundary(*states, mask=None if bool(mask.all()) else mask)


def run_sandwich(adapter: BlockAdapter, x: dict, rotary, u: int, d: int) -> BlockState:
    return adapter.run(BlockState(x["img"], x["txt"], x["temb"], rotary, x.get("mask")), u, d + 1)


class SandwichBlocks(nn.Module):
    """Blocks u..d as one module — what ``DistributedDataParallel`` wraps when several ranks train
    (its hooks sum the trainable parameters' gradients across ranks). The blocks stay where they are
    in the model; this only groups them."""

    def __init__(self, adapter: BlockAdapter, u: int, d: int):
        super().__init__()
        self.blocks = nn.ModuleList(adapter.block(j) for j in range(u, d + 1))
        self.adapter, self.u, self.d = adapter, u, d

    def forward(self, img: torch.Tensor, txt: torch.Tensor, temb: torch.Tensor, rotary,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = run_sandwich(self.adapter, {"img": img, "txt": txt, "temb": temb, "mask": mask}, rotary, self.u, self.d)
        return out.hidden_states, out.encoder_hidden_states  # (b, N_img, D), (b, N_txt, D)


def data_parallel(net: SandwichBlocks, world: World, device: torch.device) -> nn.Module:
    """``net`` wrapped in ``DistributedDataParallel`` for several ranks (gradients averaged across
    ranks at every backward), ``net`` itself for one."""
    if world.size == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def micro_step(net: nn.Module, x: dict, y: tuple[torch.Tensor, torch.Tensor], rotary, den: torch.Tensor) -> torch.Tensor:
    """The training forward of one micro-batch: the sandwich ``net`` (:class:`SandwichBlocks`) on x,
    squared error to y over the whole batch's ‖y‖² (``den``) — its gradients summed over
    micro-batches are the batch's."""
    img, txt = net(x["img"], x["txt"], x["temb"], rotary, x.get("mask"))
    return _sq_err(BlockState(img, txt, x["temb"], rotary, x.get("mask")), y) / den


def _unpadded(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(n, N_txt, D) with padded text tokens' rows zeroed (``mask`` False: Qwen-Image's padding, whose
    states the model computes but never reads); unchanged when nothing is padded."""
    return per_token if mask is None else per_token * mask[..., None].to(per_token.device, per_token.dtype)


def _sq_err(out: BlockState, y: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Squared error summed over both streams (text: unpadded tokens, ``out.text_mask``), in float32."""
    return ((out.hidden_states.float() - y[0].float()) ** 2).sum() + \
        _unpadded((out.encoder_hidden_states.float() - y[1].float()) ** 2, out.text_mask).sum()


@torch.no_grad()
def sandwich_loss(adapter: BlockAdapter, b: Boundary, rotary, u: int, d: int, micro_batch: int, device) -> tuple[float, float]:
    """(squared error, squared target norm) of the sandwich over every sample of ``b``."""
    num = 0.0
    for mb in torch.arange(len(b)).split(micro_batch):
        x, y = b.take(mb, device)
        num += float(_sq_err(run_sandwich(adapter, x, rotary, u, d), y))
    return num, float(b.target_norm(torch.arange(len(b))))


def rank_micro_batches(pick: torch.Tensor, n_rows: int, micro_batch: int, world: World) -> list[torch.Tensor]:
    """The samples of a batch (``pick``: positions in a round of ``n_rows``) that this rank holds — its
    contiguous share of the round, :meth:`World.part` — as rows of its own boundary states, in
    micro-batches of at most ``micro_batch``, as many as the busiest rank needs: DDP sums gradients at
    every backward, so every rank runs the same number; a rank's extra ones are empty (it then
    contributes zero).

    >>> [m.tolist() for m in rank_micro_batches(torch.tensor([0, 1, 2, 5, 6]), 8, 2, World(1, 2))]
    [[1, 2], []]
    """
    shares = [World(r, world.size).part(n_rows) for r in range(world.size)]
    n = max(-(-int(((pick >= s.start) & (pick < s.stop)).sum()) // micro_batch) for s in shares)
    own = shares[world.rank]
    mine = pick[(pick >= own.start) & (pick < own.stop)] - own.start
    return [mine[i * micro_batch : (i + 1) * micro_batch] for i in range(n)]
