"""Worker of tests/test_distributed.py, started by torchrun: least squares over this rank's share of
a fixed data set, the accumulators summed across ranks; rank 0 writes the result to argv[1]."""

import os
import sys

import torch
from safetensors.torch import save_file

from fastflux_core.lstsq import GramAccumulator
from fastflux_core.solve import sum_accumulator
from fastflux_core.stage import current_world

CHUNKS, ROWS, D = 10, 50, 6


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, r) chunks of a noisy affine map, the same in every process."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(D, D, generator=g), torch.randn(D, generator=g)
    out = []
    for _ in range(CHUNKS):
        x = torch.randn(ROWS, D, generator=g)
        out.append((x, x @ w.T + b + 0.1 * torch.randn(ROWS, D, generator=g)))
    return out


def solve(world) -> dict[str, torch.Tensor]:
    chunks = data()
    acc = GramAccumulator(D, D)
    for i in world.part(CHUNKS):
        acc.add(*chunks[i])
    sum_accumulator(acc, world)
    sol = acc.solve(ridge=1e-6)
    return {"gram": acc.gram, "cross": acc.cross, "weight": sol.weight, "bias": sol.bias,
            "rows": torch.tensor([acc.rows]), "ranks": torch.tensor([world.size])}


if __name__ == "__main__":
    world = current_world(os.environ.get("FASTFLUX_TEST_DEVICE", "cpu"))  # cuda: NCCL (scripts/gpu_check.sh)
    result = solve(world)
    if world.is_main:
        save_file(result, sys.argv[1])
    world.end()
