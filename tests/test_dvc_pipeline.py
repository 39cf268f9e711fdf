"""`dvc repro` on a micro config, in a temp copy with its own git repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "HF_HUB_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
}


def _run(args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def micro_params() -> dict:
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["embedded"].update(train_steps=3, judge_steps=3, eval_images_per_prompt=1, batch_size=8,
                         num_layers=1, num_single_layers=2)
    d["importance"]["blocks"] = [0, 1, 2]
    d["max_ratio"], d["ratio"] = 0.67, 0.34  # chain: 2 of 3 blocks; exported model: 1
    d["evaluate"].update(latency_warmup=0, latency_repeats=2, grid_rows=3)
    d["steps"] = {"1": {"prev": 0}, "2": {"prev": 1}}
    d["capture"].update(timesteps=[0, 1], shard_samples=8, chunk_samples=4)
    d["sandwich"].update(train_steps=5, batch_size=4)
    d["sampling"].update(steps=2)
    for s in d["prompts"].values():
        s["images_per_prompt"] = 1
    return d


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    repo.mkdir()
    for f in ("dvc.yaml", ".dvcignore"):
        if (ROOT / f).exists():
            shutil.copy(ROOT / f, repo / f)
    ignore = shutil.ignore_patterns("__pycache__", "tmp", "cache", "*.lock")
    for d in ("stages", "fastflux_core", ".dvc"):
        shutil.copytree(ROOT / d, repo / d, ignore=ignore)
    shutil.copytree(ROOT / "data" / "prompts", repo / "data" / "prompts")
    (repo / "params.yaml").write_text(yaml.safe_dump(micro_params(), sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "micro"], repo)
    return repo


def _status(repo: Path) -> dict:
    return json.loads(_run(["dvc", "status", "--json"], repo).stdout or "{}")


def test_repro_runs_and_caches(repo):
    _run(["dvc", "repro"], repo)
    assert (repo / "data" / "base" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (repo / "data" / "encoded").iterdir()) == [
        "calibration.safetensors", "evaluation.safetensors", "importance.safetensors", "training.safetensors"]
    metrics = json.loads((repo / "data" / "metrics" / "base.json").read_text())
    assert 0.0 <= metrics["prompt_accuracy"] <= 1.0 and metrics["blocks"] == 3
    ranking = json.loads((repo / "data" / "rank" / "ranking.json").read_text())
    assert sorted(ranking["order"]) == [0, 1, 2]
    assert all({"fid", "fid_real", "clip", "score", "rank", "proxy_mse"} <= set(b) for b in ranking["blocks"])
    assert (repo / "data" / "ablate" / "2" / "grid.png").is_file()
    assert (repo / "data" / "rank" / "importance_single.csv").read_text().startswith("position,")
    state = json.loads((repo / "data" / "state" / "2" / "state.json").read_text())
    assert len(state["replaced"]) == 2 and [h["step"] for h in state["history"]] == [1, 2]
    assert set(json.loads((repo / "data" / "metrics" / "sandwich" / "2.json").read_text())) >= {
        "holdout_loss_init", "holdout_loss_trained"}
    metrics = json.loads((repo / "data" / "metrics" / "evaluate.json").read_text())
    assert {"ratio", "n_pruned", "fid", "clip", "latency_ratio", "flops_ratio"} <= set(metrics)
    assert metrics["n_pruned"] == 1 and metrics["flops_ratio"] < 1
    pruning = json.loads((repo / "data" / "assemble" / "pruning.json").read_text())
    assert len(pruning["replaced_blocks"]) == 1 and pruning["params_pruned"] < pruning["params_base"]
    assert (repo / "data" / "evaluate" / "grid.png").is_file()
    assert (repo / "data" / "plots" / "sweep.csv").read_text().count("\n") == 1 + 3  # header + n = 0, 1, 2
    assert _status(repo) == {}
    out = _run(["dvc", "repro"], repo).stdout
    assert "Stage 'base' didn't change" in out and "Stage 'ablate@1' didn't change" in out
    assert "Stage 'sandwich@2' didn't change" in out and "Running stage" not in out


def test_alpha_change_reruns_rank_only(repo):
    d = yaml.safe_load((repo / "params.yaml").read_text())
    d["importance"]["alpha"] = 0.9
    (repo / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert set(_status(repo)) == {"rank"}
    out = _run(["dvc", "repro"], repo).stdout
    assert "Running stage 'rank'" in out
    assert "Running stage 'ablate" not in out and "Running stage 'reference'" not in out
    assert json.loads((repo / "data" / "rank" / "ranking.json").read_text())["alpha"] == 0.9


def test_changed_step_reruns_the_chain_from_that_step(repo):
    plan2 = repo / "data" / "plan" / "2.json"
    original = plan2.read_text()
    d = json.loads(original)
    d["sandwich"] = [0, 2]  # as if the ranking changed the second step only
    plan2.write_text(json.dumps(d))
    stale = set(_status(repo))
    assert {"capture@2", "sandwich@2"} <= stale
    assert not stale & {"capture@1", "solve@1", "sandwich@1"}
    plan2.write_text(original)
    assert _status(repo) == {}


def test_param_change_reruns_only_dependent_stages(repo):
    d = yaml.safe_load((repo / "params.yaml").read_text())
    d["embedded"]["train_steps"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert set(_status(repo)) == {"base"}
    d["embedded"]["train_steps"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert _status(repo) == {}


def test_bad_params_fail_cleanly(repo, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(repo, bad, ignore=shutil.ignore_patterns("data"))
    shutil.copytree(repo / "data" / "prompts", bad / "data" / "prompts")
    d = yaml.safe_load((bad / "params.yaml").read_text())
    d["model"] = {"source": "flux", "path": str(tmp_path / "no-such-flux")}
    (bad / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    r = _run(["dvc", "repro"], bad, check=False)
    assert r.returncode != 0
    assert "model.path does not exist" in r.stderr + r.stdout
    assert not (bad / "data" / "encoded").exists() and not (bad / "data" / "base").exists()


# runs last: it leaves the workspace at the experiment
def test_exp_run_with_another_ratio_reruns_only_assemble_and_evaluate(repo):
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "pipeline ran"], repo)
    out = _run(["dvc", "exp", "run", "-S", "ratio=0.67"], repo)
    ran = sorted(line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage"))
    assert ran == ["assemble", "evaluate"], out.stdout[-2000:]
    assert json.loads((repo / "data" / "metrics" / "evaluate.json").read_text())["n_pruned"] == 2
    too_far = _run(["dvc", "exp", "run", "-S", "ratio=0.9"], repo, check=False)
    assert too_far.returncode != 0 and "raise max_ratio" in too_far.stdout + too_far.stderr
