"""Stage solve@k — BRLL (paper §3.1): fit the replacing linear of step k from its activation store (or,
for the paper's "direct deletion" comparison, replace the block by nothing). What it writes
(:func:`save_solution`) is read back by :func:`fastflux_core.chain.load_solution`.

The replacement (:class:`fastflux_core.pruned_flux.LinearReplacement`, paper Fig. 2). A FLUX or SD3
block computes ``out = x + f(x)`` per stream (f: attention + MLP, modulated by temb); BRLL keeps the
shortcut and replaces f by g(x) = W·x + b:

    double block (FLUX), joint block (SD3):
                   img' = img + W_img·img + b_img,   txt' = txt + W_txt·txt + b_txt
    single block (FLUX):
                   [txt'; img'] = [txt; img] + W·[txt; img] + b
    final block (SD3's last, ``context_pre_only``):
                   img' = img + W_img·img + b_img, and no text output — as the block

Either way every token goes through one D×D matmul: ≈ 0.087 TFLOPs for FLUX.1-dev at 1024² against
≈ 1.305 TFLOPs for the block it replaces. The "delete" baseline (residual branch removed, no linear)
is :class:`~fastflux_core.pruned_flux.SkipBlock`. Both classes live in the self-contained file that
ships with every export, so the export loads without FastFLUX.

Double block: one linear per stream (image tokens → image residual, text → text). Single block: one
linear shared by both streams, fitted on image and text rows together — as the block itself shares
its weights over the joined sequence. Capture keeps k_img of N_img image tokens and k_txt of N_txt
text tokens per sample, so each row is weighted by N/k of its stream: the weighted normal equations
are, in expectation, those of the whole sequences (FLUX.1-dev: 4096 image and 512 text tokens — an
unweighted fit on 256 + 256 sampled rows would give text 8× its real share).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastflux_core.blocks import STREAMS
from fastflux_core.errors import FastFluxError
from fastflux_core.io import save_tensors
from fastflux_core.lstsq import GramAccumulator, Solution, residual_sums
from fastflux_core.params import SolveParams
from fastflux_core.stage import World
from fastflux_core.store import StoreReader

SOURCES = {"img": ("img",), "txt": ("txt",), "joint": ("img", "txt")}  # stream → store streams it is fitted on


def row_weight(store: StoreReader, stream: str) -> float:
    """N/k: how many of the sequence's tokens of ``stream`` one captured row stands for."""
    return store.attrs["tokens"][stream] / store.attrs["sampled"][stream]


def _pairs(store: StoreReader, streams: tuple[str, ...], chunk_rows: int, world: World, temb: torch.Tensor | None = None):
    """(inputs, residuals, row weight) chunks of the given store streams — this rank's share of them.
    With ``temb`` (sample, D) each row's input is [x; silu(temb of its sample)] (2D columns)."""
    for s in streams:
        w = row_weight(store, s)
        k = store.attrs["sampled"][s]  # rows per sample: row r is sample r // k
        mine = world.share(store.row_ranges(f"block_in_{s}", chunk_rows))
        for rows, x, r in zip(mine, store.iter_rows(f"block_in_{s}", chunk_rows, mine),
                              store.iter_rows(f"residual_{s}", chunk_rows, mine)):
            if temb is not None:
                x = torch.cat([x, torch.nn.functional.silu(temb[torch.arange(rows.start, rows.stop) // k])], 1)
            yield x, r, w


def _finite(x: torch.Tensor, what: str, store: StoreReader) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise FastFluxError(f"non-finite values in {what} of {store.path} (block {store.attrs.get('block_name')})")
    return x


def _fit(store: StoreReader, stream: str, ridge: float, chunk_rows: int, device, world: World,
         temb: torch.Tensor | None) -> tuple[Solution, float]:
    """One stream's least-squares solution (on [x; silu(temb)] when ``temb`` is given) and its
    relative residual."""
    dim = store.array("block_in_img").shape[1]
    acc = GramAccumulator(dim if temb is None else 2 * dim, dim, device)
    for x, r, w in _pairs(store, SOURCES[stream], chunk_rows, world, temb):
        acc.add(_finite(x, "block inputs", store), _finite(r, "residual outputs", store), w)
    sol = sum_accumulator(acc, world).solve(ridge)
    sums = world.sum_(torch.tensor(residual_sums(_pairs(store, SOURCES[stream], chunk_rows, world, temb), sol),
                                   dtype=torch.float64, device=acc.gram.device))
    return sol, float((sums[0] / sums[1]).sqrt()) if sums[1] > 0 else 0.0


def solve_store(store: StoreReader, ridge: float, chunk_rows: int, device: torch.device | str = "cpu",
                world: World = World(), condition: str = "none") -> tuple[dict[str, Solution], dict]:
    """Least-squares linears for the block captured in ``store``; returns them and their metrics.
    With several ranks each reads its share of the row chunks; the float64 accumulators and the
    residual's sums are added across ranks, and every rank solves the same summed system.

    ``condition: temb`` — the timestep-aware replacement g(x, temb) = W·x + b + U·silu(temb): the
    same least squares on [x; silu(temb)] (the block's modulation reads silu(temb) too), so the
    solution's weight is [W | U] (D, 2D). Its metrics also give the plain fit's residual
    (``relative_residual_plain``), the number a conditioned replacement has to beat."""
    temb = _finite(store.read("temb").float(), "timestep embeddings", store) if condition == "temb" else None
    solutions, metrics = {}, {}
    for stream in STREAMS[store.attrs["kind"]]:
        sol, res = _fit(store, stream, ridge, chunk_rows, device, world, temb)
        solutions[stream] = sol
        metrics[stream] = {"relative_residual": res, "condition_number": sol.condition_number,
                           "method": sol.method, "rows": sol.rows}
        if temb is not None:
            metrics[stream]["relative_residual_plain"] = _fit(store, stream, ridge, chunk_rows, device, world, None)[1]
    return solutions, metrics


def replacement_for(store: StoreReader, cfg: SolveParams, device: torch.device | str = "cpu",
                    world: World = World()) -> tuple[dict[str, Solution], dict[str, dict]]:
    """Step k's replacement: the least-squares linear of every stream (BRLL) with its fit metrics, or
    for ``solve.replacement: delete`` nothing at all — no streams, the block becomes the identity
    (its calibration rows are not read)."""
    if cfg.replacement == "delete":
        return {}, {}
    return solve_store(store, cfg.ridge, cfg.chunk_rows, device, world, cfg.condition)


def save_solution(path: Path, solutions: dict[str, Solution]) -> None:
    """``<stream>.weight`` W (D, D) and ``.bias`` b, and for a timestep-aware solution (weight
    [W | U], D × 2D) ``<stream>.temb_weight`` U."""
    tensors = {}
    for s, sol in solutions.items():
        d = sol.weight.shape[0]
        tensors[f"{s}.weight"], tensors[f"{s}.bias"] = sol.weight[:, :d].float().contiguous(), sol.bias.float()
        if sol.weight.shape[1] == 2 * d:
            tensors[f"{s}.temb_weight"] = sol.weight[:, d:].float().contiguous()
    save_tensors(path, tensors)


def sum_accumulator(acc: GramAccumulator, world: World) -> GramAccumulator:
    """Add every rank's Gram matrix, cross term and row count into ``acc`` (on every rank)."""
    world.sum_(acc.gram)
    world.sum_(acc.cross)
    rows = world.sum_(torch.tensor([acc.rows], dtype=torch.float64, device=acc.gram.device))
    acc.rows = int(rows.item())
    return acc
