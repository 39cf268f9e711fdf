"""The paper's experiments as DVC experiments: each variant of each experiment, over seeds.

An *experiment* compares *variants* that differ in a few params.yaml keys (e.g. Fig. 6: deletion,
deletion + ST, BRLL w/o ST, BRLL + ST) at otherwise identical settings; a *run* is one variant at
one pruning ``seed`` (captured tokens, LoRA init, sandwich batches and hold-out: everything pruning
draws) on one embedded *base* (``embedded.seed``: the base model is trained anew from it; every
prompt set stays fixed). The spread over seeds is the pruning method's; over bases, the model's: a
difference one base shows and another does not is no finding about the method. Every run is a ``dvc exp run`` — queued, then run in DVC's temporary copies —
so each is cached, reproducible and listed by ``dvc exp show``; variants that share stages (the
same ranking, the same chain) share DVC's run-cache. The results are read back from
``dvc exp show --json`` (:func:`collect`), never copied by hand, and :mod:`fastflux_core.report`
turns them into ``report/README.md``.

A report takes hours and a machine can be lost before it ends, its experiments (git refs and DVC's
cache of the clone) with it. So :func:`collect` keeps what the report reads of each finished run
beside the results: its metrics, params and code (the md5 of every code file and prompt list its
stages read, from its dvc.lock) in ``results.json``, and its outputs the report opens (the evaluation's items and grid,
the baseline's, the ranking) under ``report/runs/<rev>/``. Commit those, and a report resumed in a fresh clone runs
only what is missing — a kept run counts only while its code and params are today's
(:func:`kept_runs`), so a run is never reused after the code that computed it changed.

Every run prunes to the whole chain (``ratio = max_ratio``) with the sweep off, except the sweep
experiment, which evaluates every chain length with and without reuse; the baseline experiment's
runs add stage ``baseline`` (both models of each of its records come from one run).

>>> sorted(r.name for r in runs(["replacement"], [0]))
['brll-nost-b0-s0', 'brll-st-b0-s0', 'delete-b0-s0', 'delete-st-b0-s0']
>>> run_overrides(runs(["width"], [2])[0], max_ratio=0.25)["seed"]
2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fastflux_core.errors import FastFluxError
from fastflux_core.io import atomic_file, write_json

# each collected run's outputs that the report opens, under <repo>/RUN_FILES/<rev>/<path>: the base
# model's per-image features too, without which no interval over evaluation prompts can be drawn once
# DVC's cache is gone (~110 kB; the runs of one base share its bytes, so git stores it once per base)
RUN_FILES = "report/runs"
REFERENCE_ITEMS = "data/reference/evaluation/items.safetensors"
RUN_OUTPUTS = ("data/evaluate", "data/baseline", "data/rank", REFERENCE_ITEMS)


@dataclass(frozen=True)
class Variant:
    """One setting of an experiment: ``label`` in the report, ``name`` of its DVC runs (shared by
    every experiment that uses the same ``overrides``), the params.yaml keys it changes."""

    label: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    timed: bool = False  # its latency is a reported result: its runs go alone, after the others
    first_base_only: bool = False  # on the first base even where its experiment runs across bases


@dataclass(frozen=True)
class Experiment:
    """Variants at matched settings, the paper's claim about them, and the pairs that claim orders:
    ``(a, b)`` = variant ``a`` gives better quality than ``b`` (empty: the paper claims nothing)."""

    key: str
    title: str
    claim: str
    variants: tuple[Variant, ...]
    better: tuple[tuple[str, str], ...] = ()
    kind: str = "variants"  # variants: one evaluate record per run | sweep | baseline: their own records
    across_bases: bool = False  # a user's decision rests on it: run on every base (others: the first only)


def _default(label: str) -> Variant:
    return Variant(label, "brll-st", {})


FINISH_STEPS = 200  # the finisher's budget in the recipe experiment: one sandwich's train_steps
BASELINE_RATIOS = [0.1, 0.2]
# every option of issue 27 §3 on, with the baseline stage: one run is both the recipe experiment's
# "all three" and the baseline experiment's second FastFLUX recipe
ALL_OPTIONS = Variant("all three", "l1-all", {"sandwich.learning_rate": "auto", "solve.condition": "temb",
                                              "finish.steps": FINISH_STEPS, "baseline.ratios": BASELINE_RATIOS})


EXPERIMENTS: dict[str, Experiment] = {e.key: e for e in (
    Experiment(
        "replacement", "Replacement kind at the same blocks (paper Fig. 6, Table 4, Fig. 9)",
        "BRLL + ST beats direct deletion + ST (the linear matters) and BRLL without ST (the training "
        "matters); deletion without training is worst.",
        (Variant("delete", "delete", {"solve.replacement": "delete", "sandwich.train": False}, first_base_only=True),
         Variant("delete + ST", "delete-st", {"solve.replacement": "delete"}),
         Variant("BRLL w/o ST", "brll-nost", {"sandwich.train": False}),
         _default("BRLL + ST")),
        better=(("brll-st", "delete-st"), ("brll-st", "brll-nost"), ("brll-st", "delete")), across_bases=True),
    Experiment(
        "order", "Replacement order (paper Table 5)",
        "Importance order beats End2Start, which beats Start2End.",
        (_default("importance"), Variant("start2end", "start2end", {"importance.order": "start2end"}),
         Variant("end2start", "end2start", {"importance.order": "end2start"})),
        better=(("brll-st", "end2start"), ("brll-st", "start2end"), ("end2start", "start2end"))),
    Experiment(
        "width", "Sandwich width (paper Fig. 7)",
        "Width 3 (LoRA on one unpruned neighbour each side) clearly beats width 1 (no LoRA); width 5 "
        "adds only a marginal gain over 3.",
        (Variant("1", "width1", {"sandwich.width": 1}), _default("3"), Variant("5", "width5", {"sandwich.width": 5})),
        better=(("brll-st", "width1"),)),
    Experiment(
        "target", "Sandwich target: the current model vs the original",
        "No claim in the paper: it trains each sandwich towards the current model (the one before the step).",
        (_default("current"), Variant("original", "target-original", {"sandwich.target": "original"}))),
    Experiment(
        "importance", "Importance signal: Eq. 2 (FID + CLIP) vs the latent-error proxy",
        "No claim in the paper (the proxy is ours): how well the cheap ranking agrees with Eq. 2, and the "
        "quality of the models each ranking leads to.",
        (_default("Eq. 2"), Variant("proxy", "proxy", {"importance.method": "proxy"}))),
    Experiment(
        "sweep", "Ratio sweep and inference reuse (paper Table 6, §3.2)",
        "Quality falls slowly with the ratio while FLOPs and latency fall linearly; a lower ratio "
        "assembled from components trained further (reuse) beats the components of its own step.",
        (Variant("reuse", "sweep-reuse", {"evaluate.sweep": True}, timed=True),
         Variant("exact", "sweep-exact", {"evaluate.sweep": True, "sandwich.reuse": False})),
        better=(("sweep-reuse", "sweep-exact"),), kind="sweep"),
    Experiment(
        "recipe", "Beyond the paper: learning rate by probe, timestep-aware replacement, global finisher",
        "No claim in the paper (these options are ours, §3 of issue 27): each is meant to improve on the "
        "paper's recipe (BRLL + ST at a fixed learning rate 1e-3); 'all three' is the recipe the baseline "
        "is also compared with.",
        (_default("paper recipe (lr 1e-3)"), Variant("lr auto", "st-auto", {"sandwich.learning_rate": "auto"}, first_base_only=True),
         Variant("timestep-aware", "temb", {"solve.condition": "temb"}, first_base_only=True),
         Variant(f"finisher ({FINISH_STEPS} steps)", "finish", {"finish.steps": FINISH_STEPS}, first_base_only=True),
         ALL_OPTIONS),
        better=(("st-auto", "brll-st"), ("temb", "brll-st"), ("finish", "brll-st"), ("l1-all", "brll-st")),
        across_bases=True),
    Experiment(
        "capture", "Capture inputs: the model's own trajectory vs noised full-model latents (issue 28)",
        "No claim in the paper (it captures along trajectories): noised inputs — x_t = (1 − σ_t)·x_0 + σ_t·ε from "
        "the full model's final latents, one truncated forward per captured step — cost a fraction of the "
        "compute; the question is what they cost in quality.",
        (Variant("trajectory (paper)", "brll-st", {}),
         Variant("noised", "noised", {"capture.inputs": "noised"})),
        better=(("brll-st", "noised"),), across_bases=True),
    Experiment(
        "baseline", "Baseline: L1-norm width pruning at FastFLUX's FLOPs and at its latency (paper Tables 1–2, Fig. 5)",
        "At the same latency, FastFLUX gives better quality than L1-norm pruning followed by (global) "
        "fine-tuning, at 10 % and at 20 %.",
        (Variant("paper recipe", "l1", {"baseline.ratios": BASELINE_RATIOS}, first_base_only=True),
         Variant("paper recipe, L1 on the local objective", "l1-local",
                 {"baseline.ratios": BASELINE_RATIOS, "baseline.objective": "local"}, first_base_only=True), ALL_OPTIONS),
        better=(("fastflux", "l1"),), kind="baseline", across_bases=True),
    Experiment(
        "family", "Beyond FLUX.1: SD3, FLUX.2 and Qwen-Image at 10 % and 20 % (paper Table 3, FastSD)",
        "The method carries to SD3 (FastSD v3.0 at 10 %: HPS v2 28.08 → 27.76, CLIP 31.79 → 31.82): quality "
        "close to the full model at a low ratio. Here every embedded base is trained and pruned with the "
        "same data, seeds and budgets; each is compared with its own full model. (FLUX.2 runs without the "
        "width baseline and the timestep-aware linear, which it cannot take yet.)",
        (Variant("FLUX.1", "sweep-reuse", {"evaluate.sweep": True}, timed=True),
         Variant("SD3", "sd3-sweep", {"embedded.family": "sd3", "evaluate.sweep": True}),
         Variant("FLUX.2", "flux2-sweep", {"embedded.family": "flux2", "evaluate.sweep": True}),
         Variant("Qwen-Image", "qwenimage-sweep", {"embedded.family": "qwenimage", "evaluate.sweep": True})),
        kind="family"),
)}


DEFAULTS_FOLLOW = ("recipe", "capture", "baseline")  # the experiments params.yaml's defaults are chosen by
# What scripts/report.sh runs, to keep it within its 3 hours on a 2-core CPU: the experiments a user's
# decision rests on — the replacement kind, the recipe's options, the capture inputs and the baseline (the
# last three decide params.yaml's defaults, DEFAULTS_FOLLOW). The paper's ablations of what the method
# fixes — the replacement order (Table 5: the importance order is the method), the sandwich's target and
# width (Fig. 7), the ratio sweep with reuse (Table 6) — and the importance proxy (ours, not the default
# ranking) run on request (--experiments +order,target,width,importance,sweep: 27 more runs, ~45 min by
# the runs' costs in README "How long"), as does the family experiment, which has its own page
# (report/family/, README: "Four architectures on the same budget") and a base training per architecture.
ON_REQUEST = ("family", "order", "target", "width", "importance", "sweep")
DEFAULT_EXPERIMENTS = tuple(k for k in EXPERIMENTS if k not in ON_REQUEST)


@dataclass(frozen=True)
class Run:
    """One ``dvc exp run``: a variant at a pruning seed, on one embedded base."""

    name: str  # DVC experiment name: <variant>-b<base>-s<seed>
    variant: str
    seed: int  # params.yaml seed: everything pruning draws
    overrides: dict[str, Any]
    base: int = 0  # embedded.seed: which embedded base model (its training's seed) is pruned


def runs(keys: list[str], seeds: list[int], bases: list[int] = (0,)) -> list[Run]:
    """The distinct runs the experiments ``keys`` need, every variant at every seed, on every base
    for the experiments a user's decision rests on (``across_bases``) and on the first base for the
    others (a variant shared by two experiments runs once), in the order they are queued."""
    out: dict[str, Run] = {}
    # the experiments run on every base first, those params.yaml's defaults follow first of all (an
    # interrupted report keeps the evidence that matters most; run it again and it resumes); within a
    # variant seed-major, so the two runs that go at once train two bases, not one twice
    for key in sorted(keys, key=lambda k: (not EXPERIMENTS[k].across_bases, k not in DEFAULTS_FOLLOW)):
        exp = EXPERIMENTS[key]
        for v in exp.variants:
            for s in seeds:
                for b in bases if exp.across_bases and not v.first_base_only else bases[:1]:
                    r = Run(f"{v.name}-b{b}-s{s}", v.name, s, v.overrides, b)
                    if out.setdefault(r.name, r).overrides != r.overrides:
                        raise ValueError(f"variant name {v.name} is used for two different settings")
    return list(out.values())


def with_latency_cut(todo: list[Run], cut: float | None) -> list[Run]:
    """The runs with the baseline stage on also build an L1 model matched on latency: one that removes
    ``cut`` times FastFLUX's FLOPs (``baseline.latency_flops_cut``, measured by
    ``benchmarks/latency_match.py``); no change when ``cut`` is None."""
    if cut is None:
        return todo
    return [replace(r, overrides={**r.overrides, "baseline.latency_flops_cut": cut}) if "baseline.ratios" in r.overrides
            else r for r in todo]


# The paper's recipe, which every run starts from (a variant's overrides on top): the options of issue 27
# §3 off, trajectories captured. Set here, not read from params.yaml, so "BRLL + ST" stays the paper's
# recipe whatever defaults params.yaml takes from the evidence.
PAPER_RECIPE: dict[str, Any] = {"sandwich.learning_rate": 0.001, "solve.condition": "none", "finish.steps": 0,
                                "capture.inputs": "trajectory"}


def run_overrides(run: Run, max_ratio: float) -> dict[str, Any]:
    """Every params.yaml key a run sets: the whole chain, no sweep (unless its variant sweeps), the
    paper's recipe with its variant's changes, its base and its seed."""
    return {"ratio": max_ratio, "evaluate.sweep": False, **PAPER_RECIPE, **run.overrides, "embedded.seed": run.base,
            "seed": run.seed}


def _dvc(*args: str, cwd: Path) -> str:
    r = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, bool) else str(v)


def stale_runs(todo: list[Run], found: dict[str, dict], max_ratio: float) -> list[str]:
    """Names of ``todo`` that exist among ``found`` (:func:`experiment_results`) with other settings
    than the run asks for (e.g. another ``baseline.latency_flops_cut``): never to be reused.

    >>> run = Run("l1-b0-s0", "l1", 0, {"baseline.latency_flops_cut": 1.2})
    >>> same = run_overrides(run, 0.25)
    >>> stale_runs([run], {"l1-b0-s0": {"params": same}}, 0.25), stale_runs([run], {"l1-b0-s0": {"params": {
    ...     **same, "baseline.latency_flops_cut": 1.3}}}, 0.25)
    ([], ['l1-b0-s0'])
    """
    return [r.name for r in todo if r.name in found and any(
        json.dumps(found[r.name]["params"].get(k)) != json.dumps(v) for k, v in run_overrides(r, max_ratio).items())]


def clear_interrupted(repo: Path) -> list[str]:
    """Empty the queue an interrupted report left behind, so a resumed one queues each missing run
    once: tasks still marked running (their worker died with the machine or the session; ``dvc queue
    kill`` marks them failed), then every queued or failed task. Finished runs are experiments, not
    queue entries, and are kept. Returns the names that were marked running. One report per clone:
    a second one running beside it would lose its tasks here."""
    running = [line.split()[1] for line in _dvc("queue", "status", cwd=repo).splitlines()
               if line.split()[-1:] == ["Running"]]
    if running:
        print(f"runs an interrupted report left marked running, run again: {', '.join(running)}")
        _dvc("queue", "kill", *running, cwd=repo)
    _dvc("queue", "remove", "--queued", "--failed", cwd=repo)
    return running


def run_all(todo: list[Run], repo: Path, jobs: int = 1, kept: dict[str, dict] | None = None) -> None:
    """Queue every run not already among the repo's experiments (``dvc exp run --queue``) nor ``kept``
    (:func:`kept_runs`), then run the queue (``dvc exp run --run-all``: DVC's temporary copies,
    ``jobs`` at a time). The baseline is the repo's HEAD: commit the code and dvc.lock the runs should
    start from."""
    max_ratio = yaml.safe_load((repo / "params.yaml").read_text())["max_ratio"]
    clear_interrupted(repo)  # before the results are read: a resumed report queues what is missing
    found = experiment_results(repo)
    stale = stale_runs(todo, found, max_ratio)
    if stale:  # e.g. another latency cut: a run of that name exists with other settings, never reuse it
        raise RuntimeError(f"runs {', '.join(stale)} exist with other settings than asked now: remove them "
                           f"(dvc exp remove {' '.join(stale)}) or run in a fresh clone")
    done = set(found) | set(kept or {})
    queued = [r for r in todo if r.name not in done]
    for r in queued:
        sets = [a for k, v in run_overrides(r, max_ratio).items() for a in ("-S", f"{k}={_value(v)}")]
        _dvc("exp", "run", "--queue", "-n", r.name, *sets, cwd=repo)
    if not queued:
        return
    _dvc("exp", "run", "--run-all", "-j", str(jobs), cwd=repo)
    done = set(experiment_results(repo)) | set(kept or {})
    missing = [r.name for r in todo if r.name not in done]
    if missing:
        raise RuntimeError(f"runs that did not finish: {', '.join(missing)} (see `dvc queue logs <name>`)")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def experiment_results(repo: Path) -> dict[str, dict]:
    """``dvc exp show --json`` of the repo's HEAD, per finished experiment name: its git revision,
    params (flattened keys) and metrics (per metrics file, flattened). A queued, running or failed
    task is listed too, with its executor's state: it is no result (a resumed report once took the
    queue it then emptied for finished runs, and ran nothing)."""
    shown = json.loads(_dvc("exp", "show", "--json", "--no-fetch", cwd=repo) or "[]")
    out: dict[str, dict] = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            if (exp.get("executor") or {}).get("state", "success") != "success":
                continue
            for rev in exp.get("revs") or []:
                name, data = rev.get("name"), rev.get("data") or {}
                if not name or rev.get("error"):
                    continue
                params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
                metrics = {f: _flatten(m.get("data", {})) for f, m in (data.get("metrics") or {}).items()}
                out[name] = {"rev": data.get("rev", rev.get("rev")), "params": _flatten(params), "metrics": metrics}
    return out


def code_of(repo: Path, rev: str) -> dict[str, str]:
    """The code and shipped data a run's stages read: path → md5 of every file dep of its dvc.lock
    that no stage writes (the Python files, the prompt lists; DVC's md5 of a file is the md5 of its
    bytes), read from the run's commit."""
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=repo, capture_output=True,
                                         text=True, check=True).stdout)
    outs = [o["path"] for stage in lock["stages"].values() for o in stage.get("outs", [])]
    written = lambda p: any(p == o or p.startswith(f"{o}/") or o.startswith(f"{p}/") for o in outs)  # noqa: E731
    return {d["path"]: d["md5"] for stage in lock["stages"].values() for d in stage.get("deps", [])
            if not d["md5"].endswith(".dir") and not written(d["path"])}


def code_changed(repo: Path, code: dict[str, str]) -> list[str]:
    """The files of ``code`` (:func:`code_of`) whose bytes in ``repo`` are not the ones the run ran.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.py").write_text("x = 1")
    >>> code_changed(d, {"a.py": hashlib.md5(b"x = 1").hexdigest()}), code_changed(d, {"a.py": "0" * 32})
    ([], ['a.py'])
    """
    return [p for p, md5 in code.items()
            if not (repo / p).is_file() or hashlib.md5((repo / p).read_bytes()).hexdigest() != md5]


def keep_outputs(repo: Path, rev: str) -> None:
    """Copy the run's outputs the report opens (:data:`RUN_OUTPUTS`, from DVC's cache at ``rev``) to
    ``RUN_FILES/<rev>/``, where :func:`run_file` finds them once the experiment itself is gone."""
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(repo), rev=rev)
    for top in RUN_OUTPUTS:
        if not fs.exists(top):
            continue
        for path in fs.find(top):
            if Path(path).name == ".gitignore":  # DVC's list of a folder's outputs for git: it would hide them
                continue
            dest = repo / RUN_FILES / rev / path
            if not dest.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(dest) as tmp:
                    Path(tmp).write_bytes(fs.read_bytes(path))


def run_file(repo: Path, rev: str | None, path: str) -> bytes | None:
    """The bytes of output ``path`` of the run at revision ``rev``: the copy :func:`collect` kept
    under ``RUN_FILES/<rev>/``, else DVC's cache; None when neither has it (the report goes without)."""
    if not rev:
        return None
    kept = repo / RUN_FILES / rev / path
    if kept.is_file():
        return kept.read_bytes()
    import dvc.api

    try:
        return dvc.api.read(path, repo=str(repo), rev=rev, mode="rb")
    except Exception:  # an output no longer in the cache
        return None


def expected_params(repo: Path, run: Run) -> dict[str, Any]:
    """The flattened params.yaml a run of ``run`` would have today: the repo's, with the run's keys set."""
    return _expected(yaml.safe_load((repo / "params.yaml").read_text()), run)


def _expected(params: dict, run: Run) -> dict[str, Any]:
    return {**_flatten(params), **run_overrides(run, params["max_ratio"])}


def kept_runs(repo: Path, results: Path, todo: list[Run]) -> dict[str, dict]:
    """The runs of an earlier ``results`` file (:func:`collect`'s) that count as done today: in
    ``todo``, their params exactly today's params.yaml with the run's keys set, every code file and
    prompt list their stages read unchanged (:func:`code_of`), and their outputs kept under
    ``RUN_FILES``. Anything else is run again."""
    if not results.is_file():
        return {}
    earlier = {r["name"]: r for r in json.loads(results.read_text()).get("runs", [])}
    params = yaml.safe_load((repo / "params.yaml").read_text())  # parsed once, not once a run
    out = {}
    for r in todo:
        rec = earlier.get(r.name)
        if not rec or "code" not in rec or "params" not in rec or code_changed(repo, rec["code"]):
            continue
        want = _expected(params, r)
        if (json.dumps(rec["params"], sort_keys=True) == json.dumps(want, sort_keys=True)
                and (repo / RUN_FILES / rec["rev"]).is_dir()):
            out[r.name] = rec
    return out


def collect(repo: Path, todo: list[Run], kept: dict[str, dict] | None = None) -> dict:
    """Everything the report needs: per run, its variant, base, seed, revision, metrics, params and
    code, its outputs kept under ``RUN_FILES`` (:func:`keep_outputs`); a run among the repo's
    experiments wins over its ``kept`` record (:func:`kept_runs`)."""
    found = experiment_results(repo)
    out = []
    for r in todo:
        if r.name in found:
            rev = found[r.name]["rev"]
            keep_outputs(repo, rev)
            out.append({"name": r.name, "variant": r.variant, "base": r.base, "seed": r.seed, "overrides": r.overrides,
                        "rev": rev, "metrics": found[r.name]["metrics"], "params": found[r.name]["params"],
                        "code": code_of(repo, rev)})
        elif kept and r.name in kept:
            out.append(kept[r.name])
    return {"runs": out}


def _whole_numbers(ap: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    """``0,1,2`` → [0, 1, 2]; anything else is a usage error naming the option."""
    items = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() for t in items) or len(set(items)) != len(items):
        ap.error(f"{option} wants distinct non-negative whole numbers separated by commas (e.g. 0,1,2), got {text!r}")
    return [int(t) for t in items]


def experiment_keys(arg: str) -> list[str]:
    """``--experiments``: comma-separated keys, or ``+keys`` for the default set and those too — the
    report holds the experiments asked for, so adding one on request must not drop the others.

    >>> experiment_keys("order,width,order"), experiment_keys("+order,target,baseline")[-3:]
    (['order', 'width'], ['baseline', 'order', 'target'])
    """
    extra = arg.startswith("+")
    keys = [k for k in (arg[1:] if extra else arg).split(",") if k]
    return list(dict.fromkeys([*DEFAULT_EXPERIMENTS, *keys] if extra else keys))  # each once: one section each


def main(argv: list[str] | None = None, prog: str = "python -m fastflux_core.experiments") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", default=",".join(DEFAULT_EXPERIMENTS),
                    help=f"comma-separated keys of EXPERIMENTS, or +keys: the default set and those (default: all but "
                    f"{', '.join(ON_REQUEST)}; known: {', '.join(EXPERIMENTS)})")
    ap.add_argument("--seeds", default="0,1,2", help="pruning seeds (params.yaml seed), comma-separated")
    ap.add_argument("--bases", default="0", help="embedded bases (embedded.seed: each trains its own base model), "
                    "comma-separated; verdicts pair runs within a base and count the bases that agree")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each stage uses every core anyway)")
    ap.add_argument("--out", default="report/results.json")
    ap.add_argument("--collect-only", action="store_true", help="only read back runs that already exist")
    ap.add_argument("--latency-match", default=None, help="benchmarks/latency_match.py's JSON: the baseline runs "
                    "also build an L1 model as fast as FastFLUX at FLUX.1-dev's width (its cut_factor)")
    args = ap.parse_args(argv)
    keys = experiment_keys(args.experiments)
    unknown = [k for k in keys if k not in EXPERIMENTS]
    if unknown:
        ap.error(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
    seeds, bases = _whole_numbers(ap, "--seeds", args.seeds), _whole_numbers(ap, "--bases", args.bases)
    repo = Path.cwd()
    source = yaml.safe_load((repo / "params.yaml").read_text()).get("model", {}).get("source", "embedded")
    if source != "embedded" and len(bases) > 1:  # no stage reads embedded.seed: the "bases" would be one model
        print(f"model.source is {source}: one base model, so --bases {args.bases} runs base {bases[0]} only")
        bases = bases[:1]
    match = read_json_option(args.latency_match, "--latency-match") if args.latency_match else None
    cut = round(match["cut_factor"], 3) if match and match.get("cut_factor") else None
    todo = with_latency_cut(runs(keys, seeds, bases), cut)
    kept = kept_runs(repo, repo / args.out, todo)  # an earlier report's runs still current (committed ones)
    if kept:
        print(f"{len(kept)} runs kept from {args.out} (today's code and params): not run again")
    if not args.collect_only:
        # runs in parallel share the cores, so their latencies are noisy: the sweep's reuse curve,
        # whose latency is Table 6's, runs alone afterwards
        timed = {v.name for k in keys for v in EXPERIMENTS[k].variants if v.timed}
        run_all([r for r in todo if r.variant not in timed], repo, args.jobs, kept)
        # alone, a run's stages may use every core (the parallel runs were given one thread each)
        cores = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        os.environ.update(OMP_NUM_THREADS=cores, MKL_NUM_THREADS=cores)
        run_all([r for r in todo if r.variant in timed], repo, 1, kept)
    results = {"experiments": keys, "seeds": seeds, "bases": bases, "latency_match": match,
               **collect(repo, todo, kept)}
    write_json(args.out, results)
    print(f"{len(results['runs'])} runs → {args.out}")


def read_json_option(path: str, what: str) -> dict:
    """The JSON object in the file a command-line option names (``what``: the option), or one line
    saying why there is none."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FastFluxError(f"{what} {path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastFluxError(f"{what} {path} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise FastFluxError(f"{what} {path} must hold a JSON object")
    return data


if __name__ == "__main__":
    from fastflux_core.cli import run_command

    run_command(main)
