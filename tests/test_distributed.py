"""Data parallelism (issue 15, first part): deterministic shares of the items, and least squares whose
float64 accumulators are summed across 2 gloo processes started by torchrun equals one process's."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from dist_worker import CHUNKS, solve
from safetensors.torch import load_file

from fastflux_core.distributed import World

TESTS = Path(__file__).resolve().parent


def test_parts_cover_every_item_once_in_order():
    for size in (1, 2, 3, 8):
        for n in (0, 1, 7, 64):
            parts = [list(World(r, size).part(n)) for r in range(size)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_least_squares_over_two_processes_equals_one(tmp_path):
    out = tmp_path / "two.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        str(TESTS / "dist_worker.py"), str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    two, one = load_file(out), solve(World())
    assert int(two["ranks"]) == 2 and int(two["rows"]) == int(one["rows"]) == CHUNKS * 50
    # the same sums in another order: float64 rounding only
    torch.testing.assert_close(two["gram"], one["gram"], rtol=1e-13, atol=0)
    torch.testing.assert_close(two["cross"], one["cross"], rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(two["weight"], one["weight"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(two["bias"], one["bias"], rtol=1e-9, atol=1e-9)
