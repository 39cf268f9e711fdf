"""The experiments report machinery: runs are deduplicated across experiments, `dvc exp show --json`
is read back per experiment name, claims get paired verdicts that can go either way, a stale timing
is never shown, and the report (tables, plots, verdicts) is written from results alone. The DVC
round trip (queue → run → read back) runs in tests/test_dvc_pipeline.py on the micro pipeline."""

import json

import pytest

from fastflux_core import experiments, report, verdicts
from fastflux_core.experiments import EXPERIMENTS, Run, run_overrides, runs, with_latency_cut


def test_variants_shared_by_experiments_run_once_per_seed():
    todo = runs(list(EXPERIMENTS), [0, 1, 2])
    names = [r.name for r in todo]
    assert len(names) == len(set(names)) and names.count("brll-st-b0-s1") == 1
    assert {r.variant for r in todo} >= {"brll-st", "delete", "delete-st", "brll-nost", "start2end", "width5"}
    o = run_overrides(next(r for r in todo if r.name == "delete-b0-s2"), max_ratio=0.25)
    assert o == {"ratio": 0.25, "evaluate.sweep": False, **experiments.PAPER_RECIPE, "solve.replacement": "delete",
                 "sandwich.train": False, "embedded.seed": 0, "seed": 2}
    assert experiments.PAPER_RECIPE == {"sandwich.learning_rate": 0.001, "solve.condition": "none", "finish.steps": 0,
                                        "capture.inputs": "trajectory"}  # the paper's, whatever params.yaml says


def test_the_default_report_runs_every_base_only_where_a_decision_rests_on_it():
    """scripts/report.sh's set (3 bases × 3 seeds): the replacement kinds, noised capture and the best
    recipe against L1 on every base; the paper recipe's L1 comparisons, the single options and untrained
    deletion on base 0; the paper's other ablations (order, target, width, sweep) and the importance
    proxy only on request."""
    todo = runs(list(experiments.DEFAULT_EXPERIMENTS), [0, 1, 2], [0, 1, 2])
    bases = {v: {r.base for r in todo if r.variant == v} for v in {r.variant for r in todo}}
    assert {v for v, b in bases.items() if b == {0, 1, 2}} == {"brll-st", "delete-st", "brll-nost", "l1-all", "noised"}
    assert {v for v, b in bases.items() if b == {0}} == {"delete", "st-auto", "temb", "finish", "l1", "l1-local"}
    assert len(todo) == 5 * 9 + 6 * 3  # no start2end, target-original, width1, proxy, sweep-reuse, …


def test_decision_experiments_run_on_every_base_with_its_own_embedded_seed():
    todo = runs(["replacement", "order"], [0, 1], bases=[0, 3])
    replacement = [r for r in todo if r.variant in ("delete-st", "brll-nost")]
    assert len(replacement) == 2 * 2 * 2 and {(r.base, r.seed) for r in replacement} == {(0, 0), (0, 1), (3, 0), (3, 1)}
    assert {r.base for r in todo if r.variant == "start2end"} == {0}  # order: the first base only
    assert {r.base for r in todo if r.variant == "delete"} == {0}  # first_base_only, in an every-base experiment
    assert {r.base for r in todo if r.variant == "brll-st"} == {0, 3}  # shared: on every base the decision needs
    r = next(r for r in todo if r.name == "delete-st-b3-s1")
    assert run_overrides(r, 0.25)["embedded.seed"] == 3 and run_overrides(r, 0.25)["seed"] == 1
    assert run_overrides(Run("sweep-exact-s0", "sweep-exact", 0, {"evaluate.sweep": True, "sandwich.reuse": False}),
                         0.25)["evaluate.sweep"] is True
    names = [r.name for r in todo]  # queue order: every-base experiments first; seed-major, so runs that go
    assert names.index("delete-st-b3-s0") < names.index("delete-st-b0-s1")  # at once train two bases, not one twice
    assert names.index("brll-st-b3-s1") < names.index("start2end-b0-s0")
    cut = with_latency_cut(runs(["baseline", "replacement"], [0]), 1.2)
    assert {r.variant for r in cut if r.overrides.get("baseline.latency_flops_cut") == 1.2} == {"l1", "l1-local", "l1-all"}
    assert all("baseline.latency_flops_cut" not in r.overrides for r in cut if "baseline.ratios" not in r.overrides)


@pytest.mark.parametrize("b, verdict", [([4.0, 3.1, 5.05], "supports"), ([2.0, 0.9, 2.95], "contradicts"),
                                        ([3.2, 1.9, 4.1], "inconclusive")])
def test_paired_verdict_goes_either_way(b, verdict):
    assert verdicts.paired([3.0, 2.0, 4.0], b)["verdict"] == verdict


def _exp_show(runs_: dict[str, dict]) -> list:
    """What `dvc exp show --json` prints (DVC 3.67): the workspace, then the baseline with its experiments."""
    exps = [{"revs": [{"rev": f"{i:040x}", "name": name, "data": {
        "rev": f"{i:040x}", "params": {"params.yaml": {"data": {"seed": 0}}},
        "metrics": {f: {"data": m} for f, m in metrics.items()}}}]} for i, (name, metrics) in enumerate(runs_.items())]
    return [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
            {"rev": "f" * 40, "name": "main", "data": {}, "experiments": exps}]


def _metrics(fid: float, model: str, timing_model: str, latency: float = 0.8) -> dict:
    return {"data/metrics/evaluate.json": {"fid": fid, "fid_real": 3.0 + fid, "clip": 0.8, "prompt_accuracy": 0.9,
                                           "flops_ratio": 0.77, "eval_images": 200, "clip_kind": "judge_alignment",
                                           "model": model},
            "data/timing/evaluate.json": {"latency_ratio": latency, "model": timing_model}}


def test_results_are_read_back_from_dvc_exp_show(monkeypatch):
    shown = _exp_show({"brll-st-s0": _metrics(1.0, "aa", "aa"), "delete-s0": _metrics(2.0, "bb", "aa")})
    monkeypatch.setattr(experiments, "_dvc", lambda *a, cwd: json.dumps(shown))
    kept = []  # no git nor DVC here: what collect would keep of each run, and the code it would read
    monkeypatch.setattr(experiments, "keep_outputs", lambda repo, rev: kept.append(rev))
    monkeypatch.setattr(experiments, "code_of", lambda repo, rev: {"stages/x.py": rev})
    got = experiments.collect(None, [Run("brll-st-s0", "brll-st", 0, {}), Run("delete-s0", "delete", 0, {}),
                                     Run("width1-s0", "width1", 0, {"sandwich.width": 1})])
    assert [r["name"] for r in got["runs"]] == ["brll-st-s0", "delete-s0"]  # width1 never ran: left out
    assert got["runs"][1]["metrics"]["data/metrics/evaluate.json"]["fid"] == 2.0
    assert kept == [r["rev"] for r in got["runs"]] and got["runs"][0]["code"] == {"stages/x.py": got["runs"][0]["rev"]}


def _results(fids: dict[str, list[float]]) -> dict:
    out = []
    for variant, values in fids.items():
        for seed, fid in enumerate(values):
            # the delete runs' timing belongs to another model (their evaluate was restored from run-cache)
            out.append({"name": f"{variant}-s{seed}", "variant": variant, "seed": seed, "overrides": {}, "rev": None,
                        "metrics": _metrics(fid, f"m-{variant}-{seed}",
                                            "other" if variant == "delete" else f"m-{variant}-{seed}")})
    return {"experiments": ["replacement"], "seeds": [0, 1, 2], "runs": out}


def test_a_verdict_needs_every_base_to_agree(tmp_path):
    """Pairs are (base, seed); base 1 reverses the order at every seed, so the pooled test alone
    (which favours BRLL + ST) does not carry the verdict."""
    results = {"experiments": ["replacement"], "seeds": [0, 1, 2], "bases": [0, 1, 2], "runs": []}
    for base, gap in ((0, 0.5), (1, -0.1), (2, 0.5)):
        for seed in range(3):
            for variant, fid in (("brll-st", 1.0 + 0.01 * seed), ("delete-st", 1.0 + gap + 0.02 * seed)):
                results["runs"].append({"name": f"{variant}-b{base}-s{seed}", "variant": variant, "base": base,
                                        "seed": seed, "overrides": {}, "rev": None, "metrics": _metrics(fid, "m", "m")})
    text = report.write_report(results, tmp_path, tmp_path / "report")
    line = next(line for line in text.splitlines() if line.startswith("- BRLL + ST better than delete + ST"))
    assert "over 9 runs (3 bases × seeds; 2 of 3 bases agree in sign)" in line and line.endswith("**inconclusive**")
    assert float(line.split("paired t p = ")[1].split(" ")[0]) < 0.05  # pooled over runs it would have "supported"


def test_report_tables_verdicts_and_plots_from_results_alone(tmp_path):
    results = _results({"brll-st": [1.0, 1.2, 0.9], "delete-st": [2.0, 2.3, 1.8], "brll-nost": [1.5, 1.6, 1.4],
                        "delete": [3.0, 3.1, 2.9]})
    text = report.write_report(results, tmp_path, tmp_path / "report")
    assert "| Replacement kind at the same blocks (paper Fig. 6, Table 4, Fig. 9) | supports the paper's claim |" in text
    assert "| BRLL + ST | 1.033 ± 0.15<br><sub>1, 1.2, 0.9</sub>" in text
    row = next(line for line in text.splitlines() if line.startswith("| delete |"))
    assert row.endswith("| 0.770 | — |")  # stale timing (another model's digest): not shown
    assert "| 0.770 | 0.8 ± 0 |" in next(line for line in text.splitlines() if line.startswith("| BRLL + ST |"))
    assert (tmp_path / "report" / "replacement.png").stat().st_size > 1000
    reversed_ = _results({"brll-st": [2.0, 2.3, 1.8], "delete-st": [1.0, 1.2, 0.9], "brll-nost": [1.5, 1.6, 1.4],
                          "delete": [3.0, 3.1, 2.9]})
    assert "does not support the paper's claim" in report.write_report(reversed_, tmp_path, tmp_path / "r2")
    assert "Sample size: 200 evaluation images" in text and "standard error is 0.021" in text
    header = "| variant | FID vs full | FID vs real | alignment | prompt accuracy | FLOPs ratio | latency ratio |"
    assert header in text  # no HPS column: no run has one


def test_a_metric_gets_a_column_when_some_run_has_it(tmp_path):
    """HPS v2 (FLUX.1-dev with metrics.hps_*): its column appears; runs without it show —."""
    results = _results({"brll-st": [1.0, 1.2, 0.9], "delete-st": [2.0, 2.3, 1.8]})
    for r in results["runs"]:
        if r["variant"] == "brll-st":
            r["metrics"]["data/metrics/evaluate.json"]["hps"] = 0.25 + 0.01 * r["seed"]
    text = report.write_report(results, tmp_path, tmp_path / "report")
    assert "| prompt accuracy | HPS | FLOPs ratio |" in text
    assert "| 0.26 ± 0.01<br><sub>0.25, 0.26, 0.27</sub> | 0.770 |" in text
    assert next(line for line in text.splitlines() if line.startswith("| delete + ST |")).count("| — |") == 1


def test_sweep_section_pairs_reuse_with_exact_per_chain_length(tmp_path):
    def sweep_run(variant, seed, fids, stale=False):
        m = {f"n{n}.{k}": v for n, fid in enumerate(fids)
             for k, v in (("fid", fid), ("ratio", n / 12), ("flops_ratio", 1 - 0.075 * n), ("clip", 0.8),
                          ("model", f"{variant}{seed}{n}"))}
        t = {f"n{n}.{k}": v for n in range(len(fids))
             for k, v in (("latency_ratio", 1 - 0.07 * n), ("model", "x" if stale else f"{variant}{seed}{n}"))}
        return {"name": f"{variant}-s{seed}", "variant": variant, "seed": seed, "overrides": {}, "rev": None,
                "metrics": {"data/metrics/sweep.json": m, "data/timing/sweep.json": t}}

    runs_ = [sweep_run("sweep-reuse", s, [0.0, 0.5 + 0.01 * s, 1.0 + 0.02 * s, 1.5]) for s in range(3)]
    runs_ += [sweep_run("sweep-exact", s, [0.0, 0.9 + 0.01 * s, 1.3 + 0.01 * s, 1.5], stale=True) for s in range(3)]
    lines, overall = report.sweep_section(EXPERIMENTS["sweep"], runs_, tmp_path)
    text = "\n".join(lines)
    assert overall == "supports the paper's reuse claim at every shorter chain"
    assert "| 2 | 0.167 | 1.02 ± 0.02 | 1.31 ± 0.01 |" in text and "| 0.850 | 0.86 ± 0 |" in text
    assert "- 1 blocks: reuse better than exact by 0.4 ± 0 FID" in text and "**supports**" in text
    assert "3 blocks" not in text  # the longest chain is the same model either way
    assert (tmp_path / "sweep.png").is_file()


def test_baseline_section_pairs_fastflux_with_l1_per_ratio(tmp_path):
    """The baseline experiment's runs carry FastFLUX and the L1 models (at its FLOPs, at its latency)
    per matched ratio; each verdict is paired over seeds and goes against the paper when L1 scores
    better; the latency match measured at FLUX.1-dev's width is shown with the headline."""
    def run(seed: int, ours: float, l1: float) -> dict:
        m = {"n1.ratio": 0.1, "n1.n_pruned": 1, "n1.n_blocks": 12}
        for key, share in (("l1", 0.876), ("l1_latency", 0.8)):
            m.update({f"n1.{key}.{k}": v for k, v in (
                ("params", 900), ("params_base", 1000), ("train_steps", 600), ("batch_size", 32), ("finetune", "full"),
                ("trainable_params", 900), ("kept_share", share), ("holdout_loss_init", 0.04),
                ("holdout_loss_trained", 0.001))})
        for model, fid in (("fastflux", ours), ("l1", l1), ("l1_untuned", l1 + 1), ("l1_latency", ours + 0.1 * seed - 0.1),
                           ("l1_latency_untuned", l1 + 2)):
            m.update({f"n1.{model}.{k}": v for k, v in (("fid", fid), ("fid_real", 3.0), ("clip", 0.8),
                                                        ("prompt_accuracy", 0.9))})
        m.update({"n1.fastflux.flops_ratio": 0.925, "n1.l1.flops_ratio": 0.924, "n1.l1_latency.flops_ratio": 0.9,
                  "n1.fastflux.model": "a", "n1.l1.model": "b", "n1.fastflux.fid_ci_low": ours - 0.1,
                  "n1.fastflux.fid_ci_high": ours + 0.1})
        timing = {"n1.fastflux.latency_ratio": 0.9, "n1.fastflux.model": "a", "n1.l1.latency_ratio": 0.8,
                  "n1.l1.model": "stale", "n1.l1.finetune_seconds": 100.0}
        return {"name": f"l1-s{seed}", "variant": "l1", "seed": seed, "overrides": {}, "rev": None,
                "metrics": {"data/metrics/baseline.json": m, "data/timing/baseline.json": timing}}

    match = {"config": {"double": 1, "single": 3, "dtype": "bfloat16", "size": 384, "text_tokens": 128, "threads": 2,
                        "repeats": 8},
             "fastflux": {"single 1": {"flops_ratio": 0.77, "latency_ratio": 0.79, "latency_ratio_iqr": 0.01}},
             "l1_matched": {"single 1": {"reachable": True, "share": 0.5, "flops_ratio": 0.72, "latency_ratio": 0.78,
                                         "latency_ratio_iqr": 0.02, "cut_factor": 1.22}},
             "cut_factor": 1.22, "cut_factor_range": [1.22, 1.22]}
    results = {"experiments": ["baseline"], "seeds": [0, 1, 2], "latency_match": match,
               "runs": [run(s, o, l) for s, (o, l) in enumerate([(0.6, 0.01), (0.7, 0.02), (0.65, 0.015)])]}
    text = report.write_report(results, tmp_path, tmp_path / "report")
    assert "does not support the paper's claim (the L1 baseline scores better)" in text
    row = next(line for line in text.splitlines() if line.startswith("| L1 at the same FLOPs + fine-tuning |"))
    assert row.endswith("| 0.924 | — | 900 |")  # the L1 timing belongs to another model: not shown
    assert "| 0.925 | 0.9 ± 0 | — |" in next(line for line in text.splitlines() if line.startswith("| FastFLUX |"))
    head = text.index("## FastFLUX or L1 width pruning?")  # the report opens with the decision table
    assert head < text.index("| experiment | verdict |")
    rows = [line for line in text[head:].splitlines() if line.startswith("| paper recipe |")]
    flops_row, latency_row = rows[:2]
    assert "| FLOPs | 1 of 12 (8%) | 0.925 / 0.924 |" in flops_row and "0.65 ± 0.05 (items ±0.1)" in flops_row
    assert "| -0.635 [" in flops_row and "| 1 of 1 | **L1 + fine-tuning** |" in flops_row
    # latency-matched: L1 is 0.1 worse, equal, 0.1 better on seeds 0, 1, 2 → no verdict
    assert "| latency | 1 of 12 (8%) | 0.925 / 0.900 |" in latency_row and "**neither (within the spread)**" in latency_row
    assert "remove 1.22× (range 1.22–1.22) the FLOPs" in text and "| single 1 | 0.770 | 0.790 ± 0.01 | 0.500 |" in text
    assert "- FastFLUX better than L1 at the same latency + fine-tuning with 1 blocks replaced" in text
    assert "600 AdamW steps × 32 samples" in text and "keeps 87.6% of its hidden units" in text and (tmp_path / "report" / "baseline.png").stat().st_size > 1000


def test_family_section_reads_each_architecture_at_10_and_20_percent():
    def sweep_run(variant, seed, acc):
        m = {f"n{n}.{k}": v for n, a in enumerate(acc)
             for k, v in (("fid", 0.1 * n), ("ratio", n / 12), ("flops_ratio", 1 - 0.08 * n), ("prompt_accuracy", a))}
        return {"name": f"{variant}-s{seed}", "variant": variant, "seed": seed, "overrides": {}, "rev": None,
                "metrics": {"data/metrics/sweep.json": m}}

    runs_ = [sweep_run("sweep-reuse", s, [0.9, 0.88 - 0.01 * s, 0.8, 0.7]) for s in range(3)]
    runs_ += [sweep_run("sd3-sweep", s, [0.95, 0.9, 0.85 + 0.01 * s, 0.6]) for s in range(3)]
    runs_ += [sweep_run("qwenimage-sweep", s, [0.9, 0.9, 0.9 - 0.02 * s, 0.5]) for s in range(3)]
    lines, overall = report.family_section(EXPERIMENTS["family"], runs_)
    text = "\n".join(lines)
    assert "| FLUX.1 | 0 of 12 | 0.000 |" in text and "| SD3 | 2 of 12 | 0.167 |" in text
    assert "| Qwen-Image | 2 of 12 | 0.167 |" in text and "FLUX.2" not in text  # not run: no row
    assert "3 of 12" not in text  # 25 %: not asked for
    assert "FLUX.1 at 1 block(s): prompt accuracy -0.03 ± 0.01 vs its full model" in text
    assert "SD3 at 2 block(s): prompt accuracy -0.09 ± 0.01" in overall
    assert "Qwen-Image at 2 block(s): prompt accuracy -0.02 ± 0.02" in overall


def test_item_interval_is_the_delete_one_prompt_jackknife_of_the_mean_paired_fid_difference():
    """Against a direct computation: leave each prompt's images out of every run, recompute the mean
    over runs of FID(b) − FID(a), and take the jackknife's normal interval by hand."""
    import numpy as np
    from scipy.linalg import sqrtm

    def fid(x, y):  # the textbook Fréchet distance (scipy's matrix square root)
        mx, my, cx, cy = x.mean(0), y.mean(0), np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        return float(((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * sqrtm(cx @ cy).real))

    rng = np.random.default_rng(0)
    n_prompts, per_prompt, dim = 6, 4, 3
    runs = []
    for shift in (0.3, 0.5):  # two runs: b drifts further from the base's images than a
        ref = rng.normal(size=(n_prompts * per_prompt, dim))
        runs.append((ref + rng.normal(scale=0.1, size=ref.shape), ref + shift + rng.normal(scale=0.1, size=ref.shape), ref))
    lo, hi = verdicts.paired_fid_interval(runs, per_prompt)
    prompt_of = np.arange(n_prompts * per_prompt) % n_prompts  # round-major items
    loo = np.array([np.mean([fid(b[prompt_of != j], r[prompt_of != j]) - fid(a[prompt_of != j], r[prompt_of != j])
                             for a, b, r in runs]) for j in range(n_prompts)])
    full = np.mean([fid(b, r) - fid(a, r) for a, b, r in runs])
    se = np.sqrt((n_prompts - 1) / n_prompts * ((loo - loo.mean()) ** 2).sum())
    assert np.allclose([lo, hi], [full - 1.959964 * se, full + 1.959964 * se], rtol=1e-4)
    assert lo > 0  # a is better on every prompt set
    swapped = verdicts.paired_fid_interval([(b, a, r) for a, b, r in runs], per_prompt)
    assert np.allclose(swapped, (-hi, -lo), rtol=1e-6)
    assert verdicts.paired_fid_interval([(a[:8], b[:8], r[:8]) for a, b, r in runs], per_prompt) is None  # 2 prompts


def test_the_report_says_which_defaults_the_evidence_picks_and_where_params_yaml_differs(tmp_path):
    """Issue 27/28: params.yaml's defaults follow the recipe and capture experiments. Here the probed
    learning rate is clearly better than the paper's fixed one, the timestep-aware replacement clearly
    worse, and trajectory capture no better than noised: the evidence picks auto, none and noised."""
    fids = {"brll-st": [1.0, 1.2, 0.9], "st-auto": [0.5, 0.65, 0.42], "temb": [1.5, 1.75, 1.3],
            "noised": [1.02, 1.15, 0.95]}
    results = _results(fids)
    results["experiments"] = ["recipe", "capture"]
    (tmp_path / "params.yaml").write_text(
        "sandwich: {learning_rate: 0.001}\nsolve: {condition: none}\ncapture: {inputs: trajectory}\n")
    text = report.write_report(results, tmp_path, tmp_path / "report")
    section = text.split("## What params.yaml's defaults follow")[1]
    assert "| `sandwich.learning_rate` | 0.001 | st-auto better than brll-st: supports | auto |" in section
    assert "| `solve.condition` | none | temb better than brll-st: contradicts | none |" in section
    assert "| `capture.inputs` | trajectory | brll-st better than noised: inconclusive | noised |" in section
    assert "`finish.steps`" not in section  # the finisher was not run
    assert "params.yaml differs from the evidence at: `sandwich.learning_rate`, `capture.inputs`." in section


def test_the_defaults_section_reads_each_choice_from_the_variants_it_compares():
    """Each pair the defaults section follows is a claim an experiment makes, its two variants differ in
    one params key, and the values are those the runs set (the paper's recipe where a variant has no
    override) — not params.yaml's, which may already follow the evidence; the costlier value is picked
    only where the evidence supports it."""
    from pathlib import Path

    import yaml

    claimed = {pair for e in EXPERIMENTS.values() for pair in e.better}
    assert set(report.DEFAULT_CHOICES) <= claimed
    choices = {report._choice(a, b) for a, b in report.DEFAULT_CHOICES}
    assert choices == {("sandwich.learning_rate", "auto", 0.001), ("solve.condition", "temb", "none"),
                       ("finish.steps", experiments.FINISH_STEPS, 0), ("capture.inputs", "trajectory", "noised")}
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["sandwich"]["learning_rate"], params["capture"]["inputs"] = 0.001, "trajectory"
    found = {("st-auto", "brll-st"): "supports", ("brll-st", "noised"): "inconclusive"}
    text = "\n".join(report.default_lines(found, params))
    assert "| `sandwich.learning_rate` | 0.001 | st-auto better than brll-st: supports | auto |" in text
    assert "| `capture.inputs` | trajectory | brll-st better than noised: inconclusive | noised |" in text
    assert "differs from the evidence at: `sandwich.learning_rate`, `capture.inputs`." in text


class FakeDvc:
    """``dvc`` as experiments._dvc calls it, over experiments in a state each ("success", "queued",
    "running", "failed"): queue status/kill/remove, exp show --json, exp run --queue / --run-all."""

    def __init__(self, states: dict[str, str], max_ratio: float):
        self.states, self.max_ratio, self.queued = dict(states), max_ratio, []

    def _show(self) -> str:
        exps = []
        for name, state in self.states.items():
            run = next(r for r in runs(["capture"], [0, 1]) if r.name == name)
            nested: dict = {}
            for key, v in run_overrides(run, self.max_ratio).items():
                *path, last = key.split(".")
                d = nested
                for p in path:
                    d = d.setdefault(p, {})
                d[last] = v
            data = {"rev": name, "params": {"params.yaml": {"data": nested}}, "metrics": {}}
            exps.append({"executor": {"state": state}, "name": name, "revs": [{"name": name, "rev": name, "data": data}]})
        return json.dumps([{"rev": "head", "experiments": exps}])

    def __call__(self, *args: str, cwd) -> str:
        if args[:2] == ("queue", "status"):
            return "Task     Name     Created    Status\n" + "".join(
                f"abc{i:04d}  {n}  10:00  {s.capitalize()}\n" for i, (n, s) in enumerate(self.states.items()) if s != "success")
        if args[:2] == ("queue", "kill"):
            self.states.update({n: "failed" for n in args[2:]})
        elif args[:2] == ("queue", "remove"):
            self.states = {n: s for n, s in self.states.items() if s not in ("queued", "failed")}
        elif args[:2] == ("exp", "show"):
            return self._show()
        elif args[:3] == ("exp", "run", "--queue"):
            self.queued.append(args[4])
            self.states[args[4]] = "queued"
        elif args[:3] == ("exp", "run", "--run-all"):
            self.states.update({n: "success" for n, s in self.states.items() if s == "queued"})
        return ""


def test_a_resumed_report_queues_every_run_without_a_result(tmp_path, monkeypatch):
    """An interrupted report leaves tasks queued, marked running (their worker is gone) or failed; exp
    show lists them beside the finished runs. Resumed, the report runs each of them again, once, and
    not the finished one."""
    (tmp_path / "params.yaml").write_text("max_ratio: 0.25\n")
    todo = runs(["capture"], [0, 1])
    assert sorted(r.name for r in todo) == ["brll-st-b0-s0", "brll-st-b0-s1", "noised-b0-s0", "noised-b0-s1"]
    dvc = FakeDvc({"brll-st-b0-s0": "success", "noised-b0-s0": "running", "brll-st-b0-s1": "queued",
                   "noised-b0-s1": "failed"}, 0.25)
    monkeypatch.setattr(experiments, "_dvc", dvc)
    assert list(experiments.experiment_results(tmp_path)) == ["brll-st-b0-s0"]  # the others are no results
    experiments.run_all(todo, tmp_path)
    assert sorted(dvc.queued) == ["brll-st-b0-s1", "noised-b0-s0", "noised-b0-s1"]
    assert sorted(experiments.experiment_results(tmp_path)) == sorted(r.name for r in todo)


def _kept_repo(tmp_path, todo):
    """A clone an earlier report committed into: params.yaml, one stage file, and for ``todo[0]`` its
    results.json record (today's params and code) and its kept outputs under report/runs/<rev>/."""
    import hashlib

    (tmp_path / "params.yaml").write_text("max_ratio: 0.25\nsandwich:\n  steps: 40\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "solve.py").write_text("print('solve')\n")
    rev = "a" * 40
    kept = tmp_path / experiments.RUN_FILES / rev / verdicts.EVALUATE_ITEMS
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"items")
    record = {"name": todo[0].name, "variant": todo[0].variant, "base": 0, "seed": todo[0].seed, "rev": rev,
              "overrides": todo[0].overrides, "metrics": {},
              "params": experiments.expected_params(tmp_path, todo[0]),
              "code": {"stages/solve.py": hashlib.md5(b"print('solve')\n").hexdigest()}}
    (tmp_path / "report").mkdir(exist_ok=True)
    (tmp_path / "report" / "results.json").write_text(json.dumps({"runs": [record]}))
    return tmp_path / "report" / "results.json", rev


def test_a_kept_run_counts_only_while_its_code_params_and_outputs_are_todays(tmp_path):
    todo = runs(["capture"], [0, 1])
    results, rev = _kept_repo(tmp_path, todo)
    assert list(experiments.kept_runs(tmp_path, results, todo)) == [todo[0].name]
    assert experiments.run_file(tmp_path, rev, verdicts.EVALUATE_ITEMS) == b"items"  # the kept copy, no DVC
    assert experiments.run_file(tmp_path, "b" * 40, verdicts.EVALUATE_ITEMS) is None  # neither kept nor cached
    assert experiments.kept_runs(tmp_path, results, todo[1:]) == {}  # not asked for

    (tmp_path / "stages" / "solve.py").write_text("print('solve, changed')\n")
    assert experiments.kept_runs(tmp_path, results, todo) == {}  # the code that computed it changed
    (tmp_path / "stages" / "solve.py").write_text("print('solve')\n")
    (tmp_path / "params.yaml").write_text("max_ratio: 0.25\nsandwich:\n  steps: 80\n")
    assert experiments.kept_runs(tmp_path, results, todo) == {}  # a param it ran with changed
    (tmp_path / "params.yaml").write_text("max_ratio: 0.25\nsandwich:\n  steps: 40\n")
    assert list(experiments.kept_runs(tmp_path, results, todo)) == [todo[0].name]
    (tmp_path / experiments.RUN_FILES / rev / verdicts.EVALUATE_ITEMS).unlink()
    (tmp_path / experiments.RUN_FILES / rev / "data" / "evaluate").rmdir()
    (tmp_path / experiments.RUN_FILES / rev / "data").rmdir()
    (tmp_path / experiments.RUN_FILES / rev).rmdir()
    assert experiments.kept_runs(tmp_path, results, todo) == {}  # its outputs are not there to report


def test_a_report_resumed_in_a_fresh_clone_runs_only_what_was_not_kept(tmp_path, monkeypatch):
    """The machine that ran part of a report is gone, its experiments with it; what it collected and
    was committed (results.json, report/runs/) is kept, the rest runs."""
    todo = runs(["capture"], [0, 1])
    results, _ = _kept_repo(tmp_path, todo)
    dvc = FakeDvc({}, 0.25)
    monkeypatch.setattr(experiments, "_dvc", dvc)
    kept = experiments.kept_runs(tmp_path, results, todo)
    experiments.run_all(todo, tmp_path, kept=kept)
    assert sorted(dvc.queued) == sorted(r.name for r in todo[1:])
    monkeypatch.setattr(experiments, "keep_outputs", lambda repo, rev: None)  # the fake runs have no git commit
    monkeypatch.setattr(experiments, "code_of", lambda repo, rev: {})
    got = experiments.collect(tmp_path, todo, kept)["runs"]
    assert [r["name"] for r in got if r["name"] in kept] == [todo[0].name] and len(got) == len(todo)


def test_the_importance_plot_is_the_first_recipe_runs_ranking_kept_beside_the_results(tmp_path):
    """The report draws no output of the workspace: the per-block scores are the first BRLL + ST run's
    ranking, here only in its kept copy (report/runs/<rev>/), its experiment long gone."""
    results = _results({"brll-st": [1.0, 1.2, 0.9], "proxy": [1.1, 1.3, 1.0]})
    results["experiments"] = ["importance"]
    rev = "c" * 40
    results["runs"][0]["rev"] = rev
    ranking = tmp_path / experiments.RUN_FILES / rev / "data" / "rank" / "ranking.json"
    ranking.parent.mkdir(parents=True)
    ranking.write_text(json.dumps({"blocks": [{"index": i, "kind": "double" if i < 2 else "single", "score": s}
                                              for i, s in enumerate([0.9, 0.2, 0.5, 0.1])]}))
    text = report.write_report(results, tmp_path, tmp_path / "out")
    assert "Importance per block (brll-st-s0):" in text and (tmp_path / "out" / "importance_scores.png").stat().st_size > 1000
    ranking.unlink()  # neither kept nor in DVC's cache: no plot, no line
    assert "Importance per block" not in report.write_report(results, tmp_path, tmp_path / "out2")
