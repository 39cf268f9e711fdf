"""The stages under torchrun with 2 gloo processes give the one-process results (issue 15): images,
latents and activation stores byte for byte; least squares and Sandwich Training within float
tolerance. Runs on a copy of micro repo A (one process, `dvc repro`)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from test_distributed import _free_port

from fastflux_core.io import load_tensors, read_json

TESTS = Path(__file__).resolve().parent
STAGES = ["reference.py importance", "ablate.py 0", "capture.py 1 0", "solve.py 1", "sandwich.py 1 0",
          "reference.py evaluation", "evaluate.py"]
BYTES = ["data/reference/importance", "data/reference/evaluation", "data/ablate/0", "data/capture/1"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_processes_give_the_one_process_outputs(runs, tmp_path):
    one = runs["A"]
    repo = tmp_path / "two"
    shutil.copytree(one, repo, symlinks=True)
    for out in BYTES + ["data/solve/1", "data/state/1", "data/evaluate"]:
        shutil.rmtree(repo / out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                        str(TESTS / "dist_stages.py"), *STAGES], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]

    for out in BYTES:  # generation and capture: byte-identical, every file (PNGs, latents, shards, manifest)
        a, b = _files(one / out), _files(repo / out)
        assert a.keys() == b.keys(), out
        assert [k for k in a if a[k] != b[k]] == [], out
    # least squares: the same float64 sums in another order, then cast to float32
    for k, v in load_tensors(one / "data/solve/1/linear.safetensors").items():
        torch.testing.assert_close(load_tensors(repo / "data/solve/1/linear.safetensors")[k], v, rtol=1e-5, atol=1e-6)
    # Sandwich Training: DDP sums the two ranks' micro-batch gradients — float32 sums in another order
    for name in sorted(p.name for p in (one / "data/state/1").glob("*.safetensors")):
        a, b = load_tensors(one / "data/state/1" / name), load_tensors(repo / "data/state/1" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    m1, m2 = read_json(one / "data/metrics/sandwich/1.json"), read_json(repo / "data/metrics/sandwich/1.json")
    for k in ("holdout_loss_init", "holdout_loss_trained", "train_loss_last"):
        assert abs(m1[k] - m2[k]) <= 1e-4 * abs(m1[k]), k
    e1, e2 = read_json(one / "data/metrics/evaluate.json"), read_json(repo / "data/metrics/evaluate.json")
    assert e1.keys() == e2.keys() and e1["flops"] == e2["flops"]
    # the pruned model's images differ by the sandwich's float tolerance at most: scores agree closely
    for k in ("fid", "clip"):
        assert abs(e1[k] - e2[k]) <= 1e-3 * max(1.0, abs(e1[k])), k
    assert not (repo / ".fastflux-tmp").exists() or not any((repo / ".fastflux-tmp").rglob("*.tmp-shared"))
