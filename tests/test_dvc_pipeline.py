"""`dvc repro` on micro configs, in temp copies with their own git repositories.

Two pipelines start in the background as soon as the suite is collected (tests/conftest.py), so
they run while the unit tests do: A, the micro config, and C, which flips every boolean/enum switch
of params.yaml that the embedded default can take. Copy A then checks caching, which stages a change
re-runs and the params each stage reads. Once A is done, B — a copy of it — runs again the stages no
other test re-makes (their outputs must not change a byte) and then the report's queued experiment
and a warm `dvc exp run -S ratio=…`, in the background from the moment A is done — beside the unit
tests, then beside the other pipeline tests on A and C (:func:`start_b`); C, the longest, is waited for
only by its own tests.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml
from depcheck import params_problems, read_records
from suite_timeline import mark, watch

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "HF_HUB_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
}
SWITCHES = {  # every enum/boolean the embedded default can take, flipped from params.yaml's value
    "importance.method": "proxy", "importance.order": "end2start", "sandwich.width": 5,
    "sandwich.target": "original", "sandwich.reuse": False, "capture.dtype": "bfloat16",
    "evaluate.sweep": False, "prompts.disjoint": "items", "model.dtype": "bfloat16", "model.device": "cpu",
    "capture.compression": "lz4", "sandwich.gradient_checkpointing": False, "model.offload": "always",
    "importance.steps": 2, "solve.replacement": "delete", "embedded.family": "sd3", "capture.inputs": "noised",
    "sampling.true_cfg_scale": 2.0,  # classifier-free guidance: the negative prompt encoded, every sample's twin captured
}  # sandwich.train: false runs through DVC as the report's queued experiment (queued_runs, below)
ONE_THREAD = {**ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
# every stage process records the params keys it reads (tests/trace_params/sitecustomize.py, for
# test_every_params_key_a_stage_reads_is_declared)
TRACE_PARAMS = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "trace_params"),
                                               *filter(None, [os.environ.get("PYTHONPATH")])])}
GIT_ENV = ("PATH", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")


def _run(args, cwd, check=True, env=None):
    r = subprocess.run(args, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _wait(proc: subprocess.Popen, what: str, log: Path) -> None:
    if proc.wait():
        raise AssertionError(f"{what} failed ({proc.returncode}):\n{log.read_text()[-5000:]}")


def micro_params(switched: bool = False) -> dict:
    """A and B: one double and one single block, a one-step chain (fewest stages). C: every switch
    flipped — the SD3 architecture among them —, three joint blocks (the last without text output), a
    two-step chain (exported model: one block)."""
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["embedded"].update(train_steps=3, judge_steps=3, eval_images_per_prompt=1, batch_size=8)
    d["embedded"]["flux"].update(num_layers=1, num_single_layers=1)
    d["importance"]["blocks"] = [0, 1]
    d["max_ratio"], d["ratio"], d["steps"] = 0.5, 0.5, {"1": {"prev": 0}}
    # the sweep on the first 12 of the evaluation items only, at both chain lengths (listed)
    d["evaluate"].update(latency_warmup=0, latency_repeats=2, grid_rows=3, bootstrap=50, sweep_lengths=[0, 1],
                         sweep_items=12)
    d["capture"].update(timesteps=2, shard_samples=8, chunk_samples=4)
    d["sandwich"].update(train_steps=5, batch_size=4)
    d["sampling"].update(steps=2, batch_size=8)  # several batches per set: 2 ranks share them (test_distributed_stages)
    d["finish"].update(steps=3, micro_batch=2)  # the global finisher in stage assemble (and the baseline's budget)
    for s in d["prompts"].values():
        if isinstance(s, dict):
            s["images_per_prompt"] = 1
    if switched:
        d["embedded"]["sd3"].update(num_layers=3)
        d["importance"]["blocks"] = [0, 1, 2]
        d["max_ratio"], d["ratio"], d["steps"] = 0.67, 0.34, {"1": {"prev": 0}, "2": {"prev": 1}}
        for key, value in SWITCHES.items():
            section, name = key.split(".")
            d[section][name] = value
        # the L1 baseline at the one-block model, LoRA fine-tuning at FastFLUX's trainable-parameter count
        # and a second L1 model matched on latency: 1.2 × FastFLUX's FLOPs cut (benchmarks/latency_match.py)
        d["baseline"].update(ratios=[0.34], finetune="lora_matched", gradient_checkpointing=True, round_to=4,
                             latency_flops_cut=1.2)
    return d


def _make_repo(path: Path, switched: bool = False) -> Path:
    path.mkdir(parents=True)
    for f in ("dvc.yaml", ".dvcignore"):
        if (ROOT / f).exists():
            shutil.copy(ROOT / f, path / f)
    ignore = shutil.ignore_patterns("__pycache__", "tmp", "cache", "*.lock")
    for d in ("stages", "fastflux_core", ".dvc"):
        shutil.copytree(ROOT / d, path / d, ignore=ignore)
    shutil.copytree(ROOT / "data" / "prompts", path / "data" / "prompts")
    (path / "params.yaml").write_text(yaml.safe_dump(micro_params(switched), sort_keys=False))
    _run(["git", "init", "-q"], path)
    _run(["git", "add", "-A"], path)
    _run(["git", "commit", "-qm", "micro"], path)
    return path


def start_runs(root: Path) -> dict:
    """Start `dvc repro` in repos A and C (every switch flipped); one thread each so that they share
    the machine's cores without oversubscribing them. B, A's twin, is a copy of A once A is done
    (:func:`twin`): each stage process spends seconds importing torch and diffusers, and a third
    whole pipeline cost the suite a minute and a half."""
    started = {}
    for name in ("A", "C"):
        repo = _make_repo(root / name, switched=name == "C")
        log = open(root / f"log-{name}.txt", "w")  # a file, not a pipe: nobody reads while the unit tests run
        # a process group of its own: the session's end kills DVC and the stage it runs together
        # (tests/conftest.py, pytest_sessionfinish), not DVC alone with its stage left running
        proc = subprocess.Popen(["dvc", "repro"], cwd=repo, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env={**ONE_THREAD, **TRACE_PARAMS, "FASTFLUX_PARAMS_LOG": str(root / f"params-{name}")},
                                start_new_session=True)
        started[name] = (repo, proc)
        watch(name, proc)
    return {"root": root, "started": started}


def start_pipelines(root: Path, b: bool = True) -> dict:
    """:func:`start_runs`, and B's chain (:func:`b_after_a`) unless ``b`` is false (no test collected
    asks for B): the handle the session's fixtures and its end (tests/conftest.py) use."""
    handle = start_runs(root)
    if b:
        b_after_a(handle)
    return handle


def b_after_a(handle: dict) -> dict:
    """B's chain (:func:`start_b`), whose thread waits for A and copies it to B: ``handle["chain"]``."""
    handle["chain"] = start_b(handle["root"] / "B", lambda: wait_runs(handle, ("A",))["A"])
    return handle["chain"]


def wait_runs(handle: dict, names: tuple[str, ...]) -> dict:
    """Wait for pipelines ``names``; their repos and params logs (fixtures ``runs`` and ``runs_c``,
    conftest.py, and B's thread: A and B finish first, and the tests on them need not wait for C)."""
    out = {}
    for name in names:
        repo, proc = handle["started"][name]
        _wait(proc, f"dvc repro in {name}", handle["root"] / f"log-{name}.txt")
        out[name], out[f"log_{name.lower()}"] = repo, handle["root"] / f"params-{name}"
    return out


def _experiments():  # the library, imported when a test needs it (collection stays light)
    from fastflux_core import experiments

    return experiments


def queued_runs() -> list:
    """The report's one queued run here: BRLL without Sandwich Training (the untrained chain)."""
    return [_experiments().Run("brll-nost-s0", "brll-nost", 0, {"sandwich.train": False})]


# The stages B runs again, forced, before its experiments: those whose bytes no other test re-makes in
# a process of its own (reference, ablate and capture: test_distributed_stages.py, byte for byte — its
# solve, sandwich and evaluate only within float tolerance; capture and sandwich: test_crash_safety.py).
FORCED = ("encode", "base", "rank", "plan", "endpoints", "solve@1", "assemble", "evaluate", "export", "sweep",
          "baseline")


def twin(a: Path, b: Path) -> Path:
    """B: a copy of finished repo A — its git history, DVC cache and outputs."""
    shutil.copytree(a, b, symlinks=True)
    return b


def b_experiments(repo: Path, stop: threading.Event | None = None) -> dict:
    """What runs on copy B, one after the other (in :func:`start_b` 's thread), and what their tests
    check: (0) the stages of :data:`FORCED` run again in a new process each, as the pipeline ran them
    (the lock must not change: every output reproducible), (1) the report's queued run (``run_all`` of
    :func:`queued_runs`: DVC's temporary copy; the workspace must stay as it was), then (2) a warm
    ``dvc exp run -S ratio=0.0`` in the workspace. ``stop``, once set, ends it at its next step."""
    _step("B chain start", stop)
    out = {"forced": _run(["dvc", "repro", "--force", "--single-item", *FORCED], repo, env=ONE_THREAD).stdout,
           "lock_forced": (repo / "dvc.lock").read_text()}
    _step("B forced done", stop)
    run_queued(repo)
    _step("B queue done", stop)
    out["after_queue"] = {f: (repo / f).read_text() for f in ("params.yaml", "dvc.lock")}
    out["sweep_before"] = (repo / "data" / "plots" / "sweep.csv").read_text()
    out["exp_run"] = _run(["dvc", "exp", "run", "-S", "ratio=0.0"], repo).stdout
    _step("B exp done", stop)
    out["evaluate"] = json.loads((repo / "data" / "metrics" / "evaluate.json").read_text())
    out["sweep_after"] = (repo / "data" / "plots" / "sweep.csv").read_text()
    out["shown"] = json.loads(_run(["dvc", "exp", "show", "--json"], repo).stdout)
    mark("B chain done")
    return out


def _step(done: str, stop: threading.Event | None) -> None:
    """Between two steps of B's chain: the timeline's mark, and the chain's end once the session is
    over (pytest_sessionfinish sets ``stop``, then waits for the chain before it deletes B's folder)."""
    mark(done)
    if stop is not None and stop.is_set():
        raise RuntimeError(f"the session is over: B's chain stopped at {done!r}")


# run_all of queued_runs() in a Python of its own (:func:`run_queued`): argv = tests/, the project, repo B
QUEUE_CHILD = ("import sys; from pathlib import Path; sys.path[:0] = sys.argv[1:3]; import test_dvc_pipeline as t; "
               "t._experiments().run_all(t.queued_runs(), Path(sys.argv[3]))")


def run_queued(repo: Path) -> None:
    """The report's queued run (``run_all`` of :func:`queued_runs`) in a Python process of its own,
    with :data:`ENV`: ``run_all`` runs ``dvc`` with its process's environment, and this one's is the
    unit tests' meanwhile — monkeypatch.setenv of PYTHONPATH (a stand-in hpsv2) or FASTFLUX_LAUNCH
    ('garbage') would reach the experiment's stages. Its error, if any, is raised here with its output."""
    _run([sys.executable, "-c", QUEUE_CHILD, str(ROOT / "tests"), str(ROOT), str(repo)], repo)


def git_identity() -> None:
    """This process's environment gets :data:`ENV`'s PATH (the venv's ``dvc``) and git identity: the
    pipeline tests' own ``dvc`` calls (``experiments.collect`` on B) run with them. Main thread only,
    after the unit tests (the ``runs`` fixture): B's thread never reads the environment."""
    os.environ.update({k: ENV[k] for k in GIT_ENV})


def commit_baseline(repo: Path) -> dict:
    """Commit copy B as the experiments' baseline; its workspace files as they were before."""
    before = {f: (repo / f).read_text() for f in ("params.yaml", "dvc.lock")}
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline of the experiments", "--allow-empty"], repo)
    return before


def start_b(b: Path, a: Callable[[], Path] | None = None) -> dict:
    """B's chain in a background thread: once ``a`` returns finished repo A (it waits for A's `dvc
    repro`: :func:`b_after_a`), B becomes a copy of it (:func:`twin`); then B is committed as the
    experiments' baseline (:func:`commit_baseline`) and :func:`b_experiments` runs (~3 min, one process
    at a time). Started with A and C, at collection, it takes the core A leaves idle while the unit
    tests still run; started by the first pipeline test, after them, it ran mostly alone at the suite's
    end. Without ``a``, B is a finished copy already (FASTFLUX_TEST_PIPELINES).

    Returns futures ``twin`` — B and its workspace files as they were before its experiments — and
    ``b`` — what b_experiments returns —, either of which raises A's failure (the ``_wait`` error with
    its log) or the chain's; and ``stop``, an event that ends the chain at its next step. The thread
    reads nothing of this process's environment, which the unit tests change meanwhile: every command
    gets :data:`ENV` or :data:`ONE_THREAD`. It is no daemon: with no session end to wait for it
    (FASTFLUX_TEST_PIPELINES), Python waits for it before it exits, and DVC is not cut off in B."""
    chain = {"twin": Future(), "b": Future(), "stop": threading.Event()}
    threading.Thread(target=_b_chain, args=(b, a, chain), name="b-experiments").start()
    return chain


def _b_chain(b: Path, a: Callable[[], Path] | None, chain: dict) -> None:
    try:
        if a is not None:
            done_a = a()
            if chain["stop"].is_set():  # the session ended before A did: no copy to make
                raise RuntimeError("the session is over: B was not made")
            twin(done_a, b)
        chain["twin"].set_result((b, commit_baseline(b)))
    except BaseException as err:  # every future settles: the fixture and the session's end wait on them
        chain["twin"].set_exception(err)
        chain["b"].set_exception(err)
        return
    try:
        chain["b"].set_result(b_experiments(b, chain["stop"]))
    except BaseException as err:
        chain["b"].set_exception(err)


def _status(repo: Path) -> dict:
    """Stale stages, but ``validate`` and ``export``: they always run (dvc.yaml marks them always_changed)."""
    status = json.loads(_run(["dvc", "status", "--json"], repo).stdout or "{}")
    assert status.pop("validate", None) == ["always changed"] and status.pop("export", None) == ["always changed"]
    return status


def _ran(stdout: str) -> list[str]:
    return sorted(line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage"))


def test_stages_run_again_give_identical_outputs(runs):
    """Every stage's outputs are reproducible: those re-made by no other test, run again forced in
    B (a copy of A), leave dvc.lock — every output's md5 — as A's run wrote it."""
    got = runs["b"].result()
    lock_a = (runs["A"] / "dvc.lock").read_text()
    assert _ran(got["forced"]) == sorted(FORCED), got["forced"][-2000:]
    assert got["lock_forced"] == lock_a
    assert "md5" in lock_a and "data/base" in lock_a and "data/state/1" in lock_a


def test_repro_runs_and_caches(runs):
    repo = runs["A"]
    assert (repo / "data" / "base" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (repo / "data" / "encoded").iterdir()) == [
        "calibration.safetensors", "evaluation.safetensors", "importance.safetensors", "training.safetensors"]
    metrics = json.loads((repo / "data" / "metrics" / "base.json").read_text())
    assert 0.0 <= metrics["prompt_accuracy"] <= 1.0 and metrics["blocks"] == 2
    ranking = json.loads((repo / "data" / "rank" / "ranking.json").read_text())
    assert sorted(ranking["order"]) == [0, 1]
    assert all({"fid", "fid_real", "clip", "score", "rank", "proxy_mse"} <= set(b) for b in ranking["blocks"])
    assert (repo / "data" / "capture" / "1" / "calibration.zarr").is_dir()
    assert (repo / "data" / "capture" / "1" / "training.zarr").is_dir()
    state = json.loads((repo / "data" / "state" / "1" / "state.json").read_text())
    assert len(state["replaced"]) == 1 and [h["step"] for h in state["history"]] == [1]
    assert "seconds" not in json.dumps(state)  # timings never enter an output
    sandwich = json.loads((repo / "data" / "metrics" / "sandwich" / "1.json").read_text())
    assert sandwich["holdout_prompts"] >= 1 and {"holdout_loss_init", "holdout_loss_trained"} <= set(sandwich)
    metrics = json.loads((repo / "data" / "metrics" / "evaluate.json").read_text())
    assert {"ratio", "n_pruned", "fid", "clip", "flops_ratio"} <= set(metrics) and "latency_ratio" not in metrics
    assert metrics["n_pruned"] == 1 and metrics["n_blocks"] == 2 and metrics["flops_ratio"] < 1
    for key in ("fid", "clip", "clip_change", "psnr", "ssim"):  # intervals over the evaluation items (stats.py)
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"], key
    assert {"fid_dist", "fid_floor", "fid_excess"} <= set(metrics)
    assert (repo / "data" / "evaluate" / "items.safetensors").is_file()
    timing = json.loads((repo / "data" / "timing" / "evaluate.json").read_text())
    assert {"latency_ratio", "latency_ms", "latency_iqr_ms", "latency_ratio_iqr"} <= set(timing)
    pruning = json.loads((repo / "data" / "assemble" / "pruning.json").read_text())
    assert len(pruning["replaced_blocks"]) == 1 and pruning["params_pruned"] < pruning["params_base"]
    assert pruning["base"]["path"] == "data/base" and len(pruning["base"]["config_sha256"]) == 64
    export = repo / "data" / "export"  # links, not copies; the card's numbers are evaluate's
    assert os.readlink(export / "transformer") == "../assemble/transformer" and (export / "scheduler").is_symlink()
    assert json.loads((export / "block_map.json").read_text()) == {**pruning, "numbering": "original", "metrics": metrics}
    assert f"| {metrics['fid']:.4g} |" in (export / "README.md").read_text()
    assert (repo / "data" / "evaluate" / "grid.png").is_file()
    assert (repo / "data" / "plots" / "sweep.csv").read_text().count("\n") == 1 + 2  # header + n = 0, 1
    sweep = json.loads((repo / "data" / "metrics" / "sweep.json").read_text())
    assert sweep["n0"]["fid"] < 1e-6  # the full model on 12 items against its own images of the same 12 items
    assert sweep["n0"]["psnr"] == 100.0 and sweep["n0"]["ssim"] == pytest.approx(1.0, abs=1e-6)  # each image its own
    assert sweep["n1"]["psnr"] < 100.0 and sweep["n1"]["ssim"] < 1.0
    assert (repo / "data" / "timing" / "sweep.csv").read_text().count("\n") == 1 + 2
    assert _status(repo) == {}
    out = _run(["dvc", "repro"], repo).stdout
    assert "Stage 'base' didn't change" in out and "Stage 'ablate@1' didn't change" in out
    assert "Stage 'sandwich@1' didn't change" in out and _ran(out) == ["export", "validate"]


def test_every_params_key_a_stage_reads_is_declared(runs):
    repo = runs["A"]
    dvc, params = (yaml.safe_load((repo / f).read_text()) for f in ("dvc.yaml", "params.yaml"))
    records = read_records(runs["log_a"])
    assert {r["script"] for r in records} >= {"encode", "base", "reference", "ablate", "rank", "plan", "capture",
                                              "solve", "sandwich", "assemble", "evaluate", "sweep"}
    assert params_problems(dvc, params, records) == []
    dvc["stages"]["capture"]["do"]["params"].remove("capture")  # a doctored dvc.yaml is caught
    assert any("capture.image_tokens" in p for p in params_problems(dvc, params, records))


def test_alpha_and_fid_reference_change_rerun_rank_only(runs, tmp_path):
    repo = tmp_path / "A"  # a copy: A stays as DVC left it (rank's cache: false outputs rule out the run cache)
    shutil.copytree(runs["A"], repo, symlinks=True)
    d = yaml.safe_load((repo / "params.yaml").read_text())
    d["importance"].update(alpha=0.9, fid_against="real")
    (repo / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert set(_status(repo)) == {"rank"}
    out = _run(["dvc", "repro", "rank"], repo).stdout
    assert "Running stage 'rank'" in out
    assert "Running stage 'ablate" not in out and "Running stage 'reference" not in out
    ranking = json.loads((repo / "data" / "rank" / "ranking.json").read_text())
    assert ranking["alpha"] == 0.9 and ranking["fid_key"] == "fid_real"
    assert "rank" not in _status(repo)


def test_editing_a_tool_reruns_no_stage(runs, tmp_path):
    """The memory estimator, the report, the CLI and the benchmarks are no stage's code (issue 29):
    editing them leaves every stage cached. The control: editing a module that computes outputs
    (least squares) makes exactly the stages that import it stale."""
    repo = tmp_path / "A"
    shutil.copytree(runs["A"], repo, symlinks=True)
    (repo / "benchmarks").mkdir(exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "latency_match.py", repo / "benchmarks" / "latency_match.py")
    for tool in ("fastflux_core/budget.py", "fastflux_core/report.py", "fastflux_core/cli.py",
                 "benchmarks/latency_match.py"):
        with open(repo / tool, "a") as f:
            f.write("\n# edited\n")
    assert _status(repo) == {}
    with open(repo / "fastflux_core" / "lstsq.py", "a") as f:
        f.write("\n# edited\n")
    stale = set(_status(repo))
    assert stale and all(s.startswith("solve@") for s in stale), stale


def test_changed_step_reruns_the_chain_from_that_step(runs_c):
    repo = runs_c["C"]  # the two-step chain
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


def test_param_change_reruns_only_dependent_stages(runs_c):
    repo = runs_c["C"]
    d = yaml.safe_load((repo / "params.yaml").read_text())
    d["embedded"]["train_steps"] = 4
    d["prompts"]["disjoint"] = "prompts"  # validation only: no stage reads it
    (repo / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert set(_status(repo)) == {"base"}
    d["embedded"]["train_steps"] = 3
    d["prompts"]["disjoint"] = "items"
    (repo / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert _status(repo) == {}


def test_bad_params_fail_cleanly(runs, tmp_path):
    repo = runs["A"]
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


def test_exp_run_with_another_ratio_reruns_only_assemble_evaluate_and_export(runs):
    got = runs["b"].result()  # run on B in the background (b_experiments)
    assert _ran(got["exp_run"]) == ["assemble", "evaluate", "export", "validate"], got["exp_run"][-2000:]
    assert got["evaluate"]["n_pruned"] == 0 and got["evaluate"]["flops_ratio"] == 1.0
    assert got["sweep_after"] == got["sweep_before"]
    assert "latency_ratio" in json.dumps(got["shown"])  # the timing file is a top-level metric of the experiment


def test_every_switch_runs_through_dvc(runs_c):
    repo = runs_c["C"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert all(params[k.split(".")[0]][k.split(".")[1]] == v for k, v in SWITCHES.items())
    ranking = json.loads((repo / "data" / "rank" / "ranking.json").read_text())
    assert ranking["method"] == "proxy" and ranking["order"] == [2, 1, 0]  # end2start
    reference = {s: json.loads((repo / "data" / "reference" / s / "metrics.json").read_text()) for s in ("importance", "evaluation")}
    assert reference["importance"]["steps"] == 2 and reference["evaluation"]["steps"] == params["sampling"]["steps"]
    import zarr

    store = zarr.open_group(str(repo / "data" / "capture" / "1" / "training.zarr"), mode="r")
    assert store["latents"].attrs["stored_as"] == "bfloat16" and store.attrs["stored_as"] == "bfloat16"
    assert store.attrs["inputs"] == "noised" and (repo / "data" / "endpoints" / "training.safetensors").is_file()
    assert json.loads((repo / "data" / "metrics" / "sandwich" / "1.json").read_text())["target"] == "original"
    assert (repo / "data" / "plots" / "sweep.csv").read_text().count("\n") == 1  # header only: sweep off
    assert json.loads((repo / "data" / "metrics" / "evaluate.json").read_text())["n_pruned"] == 1
    config = json.loads((repo / "data" / "assemble" / "transformer" / "config.json").read_text())
    assert config["weights_dtype"] == "bfloat16" and config["_class_name"] == "PrunedSD3Transformer2DModel"
    assert json.loads((repo / "data" / "metrics" / "base.json").read_text())["family"] == "sd3"
    assert "StableDiffusion3Pipeline" in (repo / "data" / "export" / "README.md").read_text()
    assert config["deleted_blocks"] == [2] and config["replaced_blocks"] == []  # end2start: block 2 first
    base = json.loads((repo / "data" / "metrics" / "baseline.json").read_text())["n1"]
    assert base["l1"]["finetune"] == "lora_matched" and base["l1"]["trainable_params"] < base["l1"]["params"]
    l1 = base["l1"]  # the largest rank whose LoRA fits FastFLUX's trainable count, on the same rank-1 scale
    per_rank = l1["trainable_params"] // l1["lora_rank"]
    assert l1["trainable_params"] <= l1["fastflux_trainable_params"] < l1["trainable_params"] + per_rank
    assert abs(base["l1"]["flops_ratio"] - base["fastflux"]["flops_ratio"]) < 0.03  # matched up to round_to
    assert not params["sandwich"]["reuse"]  # steps 1..n, and the finisher's on top
    assert base["l1"]["train_steps"] == params["sandwich"]["train_steps"] + params["finish"]["steps"]
    finished = json.loads((repo / "data" / "assemble" / "pruning.json").read_text())["finish"]
    assert finished["steps"] == 3 and finished["holdout_loss_trained"] <= finished["holdout_loss_init"]
    assert (repo / "data" / "baseline" / "grid_n1.png").is_file()
    fast = base["l1_latency"]  # cut 1.2 × FastFLUX's FLOPs cut, up to round_to
    assert fast["matched_on"] == "latency" and base["l1"]["matched_on"] == "flops"
    assert fast["target_flops_ratio"] == round(1 - 1.2 * (1 - base["fastflux"]["flops_ratio"]), 12)
    assert abs(fast["flops_ratio"] - fast["target_flops_ratio"]) < 0.03 and fast["flops_ratio"] < base["l1"]["flops_ratio"]
    assert set(base["l1_latency_untuned"]) >= {"fid", "clip"}
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    assert params_problems(dvc, params, read_records(runs_c["log_c"])) == []


def test_report_runs_are_queued_dvc_experiments_read_back_by_name(runs, tmp_path):
    """The report's machinery on the micro pipeline: one run (BRLL without Sandwich Training — the
    untrained chain through DVC) queued and run in DVC's temporary copy of B (in the background:
    :func:`b_experiments`), read back from ``dvc exp show --json`` by name; the workspace is left as
    it was. What a resumed report needs once the experiment is gone is kept: the outputs the report
    opens, copied out of DVC's cache, and the md5 of the code the run ran — today's, so it counts."""
    got_b = runs["b"].result()  # run_all's error, if any, is raised here
    assert got_b["after_queue"] == runs["b_before"]
    exps = _experiments()
    (got,) = exps.collect(runs["B"], queued_runs())["runs"]
    assert got["name"] == "brll-nost-s0" and len(got["rev"]) == 40
    assert got["metrics"]["data/metrics/sandwich/1.json"]["trained"] is False
    assert got["metrics"]["data/metrics/evaluate.json"]["n_pruned"] == 1
    import dvc.api

    kept = runs["B"] / exps.RUN_FILES / got["rev"]
    for path in ("data/evaluate/items.safetensors", "data/evaluate/grid.png", exps.REFERENCE_ITEMS):  # what DVC's cache holds
        assert (kept / path).read_bytes() == dvc.api.read(path, repo=str(runs["B"]), rev=got["rev"], mode="rb")
    assert (kept / "data/rank/ranking.json").is_file() and not list(kept.rglob(".gitignore"))  # nothing hides them from git
    assert {"stages/evaluate.py", "fastflux_core/lstsq.py", "data/prompts/digits/evaluation.txt"} <= set(got["code"])
    assert exps.code_changed(runs["B"], got["code"]) == []
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": [got]}))
    assert list(exps.kept_runs(runs["B"], results, queued_runs())) == ["brll-nost-s0"]  # its params are today's
