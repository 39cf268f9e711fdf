"""The stages under torchrun with 2 gloo processes give the one-process results (issue 15): images,
latents and activation stores byte for byte; least squares and Sandwich Training within float
tolerance. A rank killed mid-stage leaves nothing DVC could cache, and the re-run completes. Runs on
a copy of micro repo A (one process, `dvc repro`)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_distributed import _free_port

from fastflux_core.io import load_tensors, read_json

TESTS = Path(__file__).resolve().parent
STAGES = ["reference.py importance", "ablate.py 0", "capture.py 1 0", "solve.py 1", "sandwich.py 1 0",
          "reference.py evaluation", "evaluate.py"]
BYTES = ["data/reference/importance", "data/reference/evaluation", "data/ablate/0", "data/capture/1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _launch(repo: Path, stages: list[str]) -> subprocess.Popen:
    """torchrun, 2 processes, running ``stages`` one after another (tests/dist_stages.py)."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                             str(TESTS / "dist_stages.py"), *stages], cwd=repo, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def two(runs, tmp_path_factory) -> Path:
    """A copy of A whose stages' outputs were made again by 2 processes."""
    repo = tmp_path_factory.mktemp("dist") / "two"
    shutil.copytree(runs["A"], repo, symlinks=True)
    for out in BYTES + ["data/solve/1", "data/state/1", "data/evaluate"]:
        shutil.rmtree(repo / out)
    proc = _launch(repo, STAGES)
    _, err = proc.communicate()
    assert proc.returncode == 0, err[-4000:]
    return repo


def test_two_processes_give_the_one_process_outputs(runs, two):
    one = runs["A"]
    for out in BYTES:  # generation and capture: byte-identical, every file (PNGs, latents, shards, manifest)
        a, b = _files(one / out), _files(two / out)
        assert a.keys() == b.keys(), out
        assert [k for k in a if a[k] != b[k]] == [], out
    # least squares: the same float64 sums in another order, then cast to float32
    for k, v in load_tensors(one / "data/solve/1/linear.safetensors").items():
        torch.testing.assert_close(load_tensors(two / "data/solve/1/linear.safetensors")[k], v, rtol=1e-5, atol=1e-6)
    # Sandwich Training: DDP sums the two ranks' micro-batch gradients — float32 sums in another order
    for name in sorted(p.name for p in (one / "data/state/1").glob("*.safetensors")):
        a, b = load_tensors(one / "data/state/1" / name), load_tensors(two / "data/state/1" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    m1, m2 = read_json(one / "data/metrics/sandwich/1.json"), read_json(two / "data/metrics/sandwich/1.json")
    for k in ("holdout_loss_init", "holdout_loss_trained", "train_loss_last"):
        assert abs(m1[k] - m2[k]) <= 1e-4 * abs(m1[k]), k
    e1, e2 = read_json(one / "data/metrics/evaluate.json"), read_json(two / "data/metrics/evaluate.json")
    assert e1.keys() == e2.keys() and e1["flops"] == e2["flops"]
    # the pruned model's images differ by the sandwich's float tolerance at most: scores agree closely
    for k in ("fid", "clip"):
        assert abs(e1[k] - e2[k]) <= 1e-3 * max(1.0, abs(e1[k])), k


def _worker(launcher: int, rank: int) -> int | None:
    """The pid of the worker process of ``rank`` that the torchrun ``launcher`` started (Linux /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_a_rank_killed_mid_capture_leaves_nothing_dvc_could_cache(runs, two):
    good = _files(two / "data/capture/1")
    shards = two / ".fastflux-tmp" / "capture@1"
    proc = _launch(two, ["capture.py 1 0"])
    killed = None
    while proc.poll() is None and killed is None:  # kill rank 1 once shards are being written
        if any(p.is_file() for p in shards.glob("*.tmp-shared/*.zarr/*/c/*")):
            killed = _worker(proc.pid, 1)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    _, err = proc.communicate()
    assert killed is not None, "capture finished before a shard was written"
    assert proc.returncode != 0, err[-2000:]  # torchrun stops the other rank and fails
    assert _files(two / "data/capture/1") == good  # the previous output, untouched
    assert [p for p in (two / "data").rglob("*.tmp-*")] == []  # no temporary where DVC hashes
    assert any(shards.glob("*.tmp-shared"))  # the half-written store is in the stage's temporaries

    again = _launch(two, ["capture.py 1 0"])
    _, err = again.communicate()
    assert again.returncode == 0, err[-4000:]
    assert _files(two / "data/capture/1") == _files(runs["A"] / "data/capture/1")
