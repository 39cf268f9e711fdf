"""Data parallelism (issue 15): deterministic shares of the items; least squares whose float64
accumulators are summed across 2 gloo processes started by torchrun equals one process's; a second
"node" (a second torchrun agent) follows the stage node 0 runs, and refuses another."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from dist_worker import CHUNKS, solve
from safetensors.torch import load_file

from fastflux_core.stage import World

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


PROBE = """import sys
from fastflux_core.io import atomic_dir
from fastflux_core.stage import current_world, run_stage, stage_args


def main():
    (name,) = stage_args("name")
    world = current_world("cpu")
    with atomic_dir(f"out/{name}", world) as out:
        (out / f"rank{world.rank}.txt").write_text(" ".join(sys.argv))


if __name__ == "__main__":
    run_stage(main)
"""


def _two_nodes(tmp_path, node1: list[str]) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Two torchrun agents of one process each, as two nodes with a static rendezvous: node 0 runs
    stages/probe.py; node 1 runs ``node1``."""
    (tmp_path / "stages").mkdir(exist_ok=True)
    (tmp_path / "stages" / "probe.py").write_text(PROBE)
    common = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(common + ["--node_rank", str(r), *cmd], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r, cmd in enumerate((["stages/probe.py", "hello"], node1))]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out[0], out[1]


def test_another_node_follows_the_stage_that_node_0_runs(tmp_path):
    node0, node1 = _two_nodes(tmp_path, ["-m", "fastflux_core.follow"])
    assert node0.returncode == 0 and node1.returncode == 0, node0.stderr[-2000:] + node1.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out" / "hello").iterdir()) == ["rank0.txt", "rank1.txt"]
    assert (tmp_path / "out" / "hello" / "rank1.txt").read_text() == "stages/probe.py hello"


def test_a_node_running_another_stage_is_refused(tmp_path):
    node0, node1 = _two_nodes(tmp_path, ["stages/probe.py", "other"])
    assert node1.returncode != 0 and "every node must run the same stage" in node1.stderr
    assert "error: rank 1 runs stages/probe.py other but rank 0 runs stages/probe.py hello" in node1.stderr
    assert not (tmp_path / "out").exists()  # nothing written
