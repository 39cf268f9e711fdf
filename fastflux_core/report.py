"""The experiments report: ``report/results.json`` (:mod:`fastflux_core.experiments`) → ``report/README.md``
with tables, plots and a verdict per experiment.

Quality is each run's ``data/metrics/evaluate.json`` (or, for the sweep, ``data/metrics/sweep.json``):
FID against the full model's images of the evaluation set (``fid``, lower is better: the primary
metric), FID against real images (``fid_real``), the alignment score (``clip``: the judge's
probability of the prompted digit on the default, CLIP score on FLUX) and, with the judge, the
share of images it reads as the prompted digit (``prompt_accuracy``). A paper claim "a beats b" is
judged on the primary metric over runs and over evaluation prompts (:mod:`fastflux_core.verdicts`) —
the effect size and its spread are printed either way. Latency is shown only where the timing file
belongs to the model the run evaluated (the digest both carry): a stage DVC restored from its
run-cache leaves the previous timing behind.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

from fastflux_core.errors import FastFluxError
from fastflux_core.experiments import EXPERIMENTS, PAPER_RECIPE, Experiment, read_json_option, run_file
from fastflux_core.figures import bar_plot, grouped_bars, importance_plot, read_image, sweep_plot
from fastflux_core.io import atomic_file
from fastflux_core.verdicts import EVALUATE_ITEMS, Items, mean_std, paired, with_items

EVALUATE, SWEEP, BASELINE = "data/metrics/evaluate.json", "data/metrics/sweep.json", "data/metrics/baseline.json"
TIMING_EVALUATE, TIMING_SWEEP, TIMING_BASELINE = ("data/timing/evaluate.json", "data/timing/sweep.json",
                                                  "data/timing/baseline.json")
# quality metrics (fid: the primary one, lower is better) → column heading; a table shows those some run has
METRICS = {"fid": "FID vs full", "fid_excess": "FID above its floor", "fid_real": "FID vs real", "clip": "alignment",
           "prompt_accuracy": "prompt accuracy", "hps": "HPS", "imagereward": "ImageReward",
           "psnr": "PSNR vs full (dB)", "ssim": "SSIM vs full", "lpips": "LPIPS vs full"}  # the last three: higher, higher, lower is closer


def _items_text(r: dict) -> str:
    if r.get("items") is None:
        return "no item interval (items not read)"
    lo, hi = r["items"]
    return f"95 % interval over evaluation prompts [{lo:.3g}, {hi:.3g}]"


def _over(r: dict, replicates: list[tuple[int, int]]) -> str:
    """"over 9 runs (3 bases × 3 seeds, 3 of 3 bases agree)" for a :func:`paired` result."""
    bases = sorted({b for b, _ in replicates})
    if len(bases) == 1:
        return f"over {len(replicates)} seeds (base {bases[0]})"
    return (f"over {len(replicates)} runs ({len(bases)} bases × seeds; {r['bases_agree']} of {r['bases']} bases "
            f"agree in sign)")


def _by_replicate(runs: list[dict], variant: str) -> dict[tuple[int, int], dict]:
    """The variant's runs by replicate: (base, seed)."""
    return {(r.get("base", 0), r["seed"]): r for r in runs if r["variant"] == variant}


def _latency(run: dict, metrics_file: str, timing_file: str, key: str | None = None) -> float | None:
    """The run's latency ratio if its timing belongs to the model it evaluated, else None."""
    m, t = run["metrics"].get(metrics_file, {}), run["metrics"].get(timing_file, {})
    prefix = f"{key}." if key else ""
    if m.get(f"{prefix}model") and m.get(f"{prefix}model") == t.get(f"{prefix}model"):
        return t.get(f"{prefix}latency_ratio")
    return None


def variant_table(exp: Experiment, runs: list[dict], seeds: list[int]) -> tuple[list[str], dict]:
    """The Markdown table (mean ± std and per-seed values of every metric some run has) and the values
    per variant."""
    values = {}
    for v in exp.variants:
        by_seed = _by_replicate(runs, v.name)
        got = [s for s in seeds if s in by_seed]
        if got:
            vals = {k: [by_seed[s]["metrics"][EVALUATE].get(k) for s in got] for k in (*METRICS, "flops_ratio")}
            lat = [x for x in (_latency(by_seed[s], EVALUATE, TIMING_EVALUATE) for s in got) if x is not None]
            values[v.name] = {"seeds": got, **vals, "latency_ratio": lat, "revs": [by_seed[s].get("rev") for s in got]}
    shown = [k for k in METRICS if any(x is not None for val in values.values() for x in val[k])] or ["fid"]
    rows = ["| variant | " + " | ".join(METRICS[k] for k in shown) + " | FLOPs ratio | latency ratio |",
            "|---|" + "---|" * (len(shown) + 2)]
    for v in exp.variants:
        if v.name not in values:
            rows.append(f"| {v.label} | not run |" + " |" * (len(shown) + 1))
            continue
        val = values[v.name]
        cells = [_cell([x for x in val[k] if x is not None]) for k in shown]
        lat = val["latency_ratio"]
        rows.append(f"| {v.label} | " + " | ".join(cells) + f" | {val['flops_ratio'][0]:.3f} | {_pm(lat) if lat else '—'} |")
    return rows, values


def _pm(xs: list[float]) -> str:
    m, s = mean_std(xs)
    return f"{m:.4g} ± {s:.2g}"


def _cell(xs: list[float]) -> str:
    """mean ± std with the per-seed values below, or — when there are none."""
    return _pm(xs) + f"<br><sub>{', '.join(f'{x:.4g}' for x in xs)}</sub>" if xs else "—"


def verdict_lines(exp: Experiment, values: dict, labels: dict[str, str], items: Items | None = None,
                  found: dict[tuple[str, str], str] | None = None) -> tuple[list[str], str]:
    """One line per claimed pair and the experiment's overall verdict (with ``items``: each needs its
    interval over evaluation prompts to exclude 0 too, :func:`with_items`); each pair's verdict also
    goes into ``found`` ((a, b) → verdict), for :func:`default_lines`."""
    lines, seen = [], []
    for a, b in exp.better:
        if a not in values or b not in values:
            lines.append(f"- {labels[a]} vs {labels[b]}: not run")
            continue
        common = [s for s in values[a]["seeds"] if s in values[b]["seeds"]]
        xa = [values[a]["fid"][values[a]["seeds"].index(s)] for s in common]
        xb = [values[b]["fid"][values[b]["seeds"].index(s)] for s in common]
        r = paired(xa, xb, bases=[base for base, _ in common])
        if items is not None:
            rev = {v: dict(zip(values[v]["seeds"], values[v]["revs"])) for v in (a, b)}
            r = with_items(r, items.interval([(rev[a][s], EVALUATE_ITEMS, rev[b][s], EVALUATE_ITEMS) for s in common]))
        seen.append(r["verdict"])
        if found is not None:
            found[(a, b)] = r["verdict"]
        lines.append(f"- {labels[a]} better than {labels[b]} (FID vs full model): advantage "
                     f"{r['advantage_mean']:.4g} ± {r['advantage_std']:.2g} {_over(r, common)} "
                     f"(per run {', '.join(f'{d:.3g}' for d in r['per_seed'])}), paired t p = {r['p']:.3g}"
                     + (f"; {_items_text(r)}" if items is not None else "") + f" → **{r['verdict']}**")
    if not exp.better:
        overall = "no paper claim to test: reported as measured"
    elif not seen:
        overall = "not run"
    elif all(v == "supports" for v in seen) and len(seen) == len(exp.better):
        overall = "supports the paper's claim"
    elif any(v == "contradicts" for v in seen):
        overall = "does not support the paper's claim (a claimed order is reversed)"
    else:
        overall = "partly supported or inconclusive (differences within the spread over seeds)"
    return lines, overall


def sweep_curves(exp: Experiment, runs: list[dict]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """variant → chain length n → metric → values over seeds (latency only where it is the model's)."""
    keys = (*METRICS, "flops_ratio", "ratio")
    curves: dict[str, dict[int, dict[str, list[float]]]] = {}
    for v in exp.variants:
        for run in _by_replicate(runs, v.name).values():
            sweep = run["metrics"].get(SWEEP, {})
            for n in sorted({int(k.split(".")[0][1:]) for k in sweep}):
                cell = curves.setdefault(v.name, {}).setdefault(n, {m: [] for m in (*keys, "latency_ratio")})
                for m in keys:
                    if sweep.get(f"n{n}.{m}") is not None:
                        cell[m].append(sweep[f"n{n}.{m}"])
                lat = _latency(run, SWEEP, TIMING_SWEEP, f"n{n}")
                if lat is not None:
                    cell["latency_ratio"].append(lat)
    return curves


def sweep_section(exp: Experiment, runs: list[dict], out: Path) -> tuple[list[str], str]:
    """Quality, FLOPs and latency per chain length, reuse vs the components of the step itself;
    the lines and the overall verdict on reuse."""
    curves = sweep_curves(exp, runs)
    if not curves:
        return ["Not run."], "not run"
    lines = ["| blocks replaced | ratio | FID vs full (reuse) | FID vs full (exact) | judge/CLIP (reuse) | "
             "prompt acc. (reuse) | FLOPs ratio | latency ratio |", "|---|---|---|---|---|---|---|---|"]
    reuse, exact = curves.get("sweep-reuse", {}), curves.get("sweep-exact", {})
    for n in sorted(reuse):
        r, e = reuse[n], exact.get(n, {})
        lines.append(f"| {n} | {r['ratio'][0]:.3f} | {_pm(r['fid']) if r['fid'] else '—'} | "
                     f"{_pm(e['fid']) if e.get('fid') else '—'} | {_pm(r['clip']) if r['clip'] else '—'} | "
                     f"{_pm(r['prompt_accuracy']) if r['prompt_accuracy'] else '—'} | {r['flops_ratio'][0]:.3f} | "
                     f"{_pm(r['latency_ratio']) if r['latency_ratio'] else '—'} |")
    sweep_plot(reuse, exact, out / "sweep.png")
    lines += ["", "![quality, FLOPs and latency vs ratio](sweep.png)", ""]
    k_max, seen = max(reuse), []
    for n in sorted(reuse):
        if n == 0 or n == k_max or n not in exact:
            continue
        common = min(len(reuse[n]["fid"]), len(exact[n]["fid"]))
        r = paired(reuse[n]["fid"][:common], exact[n]["fid"][:common])
        seen.append(r["verdict"])
        lines.append(f"- {n} blocks: reuse better than exact by {r['advantage_mean']:.4g} ± {r['advantage_std']:.2g} "
                     f"FID (p = {r['p']:.3g}) → **{r['verdict']}**")
    if seen and all(v == "supports" for v in seen):
        return lines, "supports the paper's reuse claim at every shorter chain"
    if any(v == "contradicts" for v in seen):
        return lines, "does not support the paper's reuse claim (the step's own components score better)"
    return lines, "inconclusive on reuse (differences within the spread over seeds)" if seen else "not run"


def family_section(exp: Experiment, runs: list[dict], ratios: tuple[float, ...] = (0.1, 0.2)) -> tuple[list[str], str]:
    """Each family's quality at ``ratios`` (its sweep's chain length n = floor(ratio · N)) beside its own
    full model (n = 0), mean ± std over seeds; the lines and a summary."""
    curves = sweep_curves(exp, runs)
    if not curves:
        return ["Not run."], "not run"
    keys = [m for m in ("fid", "fid_real", "clip", "prompt_accuracy", "hps", "imagereward", "psnr", "ssim", "lpips")
            if any(c.get(m) for curve in curves.values() for c in curve.values())]
    lines = ["| architecture | blocks replaced | ratio | " + " | ".join(METRICS[m] for m in keys) + " | FLOPs ratio |",
             "|---|---|---|" + "---|" * (len(keys) + 1)]
    drops = []
    for v in exp.variants:
        curve = curves.get(v.name, {})
        if not curve:
            continue
        n_blocks = round(max(curve) / curve[max(curve)]["ratio"][0]) if curve[max(curve)]["ratio"][0] else 0
        wanted = [0] + [int(r * n_blocks + 1e-9) for r in ratios]
        for n in [n for n in dict.fromkeys(wanted) if n in curve]:
            c = curve[n]
            lines.append(f"| {v.label} | {n} of {n_blocks} | {c['ratio'][0]:.3f} | "
                         + " | ".join(_pm(c[m]) if c[m] else "—" for m in keys) + f" | {c['flops_ratio'][0]:.3f} |")
        if "prompt_accuracy" in keys and 0 in curve:
            for n in wanted[1:]:
                if n in curve and curve[n]["prompt_accuracy"]:
                    d = [b - a for a, b in zip(curve[0]["prompt_accuracy"], curve[n]["prompt_accuracy"])]
                    drops.append(f"{v.label} at {n} block(s): prompt accuracy {_pm(d)} vs its full model")
    lines += ["", "Each row's FID vs full is against that architecture's own full model; n = 0 is the full "
              "model itself. The spread is over runs: pruning seeds, and embedded bases (embedded.seed) where "
              "several were run."]
    lines += [f"- {d}" for d in drops]
    return lines, "; ".join(drops) if drops else "reported (no paper claim to test on this metric)"


def baseline_section(exp: Experiment, runs: list[dict], seeds: list[int], repo: Path, out: Path,
                     items: Items | None = None) -> tuple[list[str], str]:
    """Per FastFLUX recipe and matched ratio: FastFLUX, the L1 models before and after fine-tuning
    (quality, FLOPs, latency, parameters), the fine-tuning budget, the first replicate's grid and the
    paired verdicts; the lines and the overall verdict."""
    lines, seen, plotted = [], [], {}
    for v in exp.variants:
        by_seed = {s: r for s, r in _by_replicate(runs, v.name).items() if s in seeds}
        if not by_seed:
            continue
        first = by_seed[min(by_seed)]
        for n in sorted({int(k.split(".")[0][1:]) for k in first["metrics"].get(BASELINE, {})}):
            more, verdicts_n = _baseline_at(v.label, by_seed, first, n, repo, out, v.name, plotted, items)
            lines += more
            seen += verdicts_n
    if not seen:
        return ["Not run."], "not run"
    grouped_bars(plotted, out / "baseline.png", "FastFLUX recipe, blocks replaced (L1 at the same FLOPs / latency)")
    lines += ["![FastFLUX vs L1 width pruning](baseline.png)", ""]
    if all(x == "supports" for x in seen):
        return lines, "supports the paper's claim at every matched ratio"
    if any(x == "contradicts" for x in seen):
        return lines, "does not support the paper's claim (the L1 baseline scores better)"
    return lines, "inconclusive (differences within the spread over seeds)"


def _baseline_at(recipe: str, by_seed: dict, first: dict, n: int, repo: Path, out: Path, name: str,
                 plotted: dict, items: Items | None = None) -> tuple[list[str], list[str]]:
    """One recipe's comparison at ``n`` blocks replaced (:func:`baseline_section`)."""
    def vals(model: str, key: str) -> list[float]:
        return [r["metrics"][BASELINE][f"n{n}.{model}.{key}"] for r in by_seed.values()
                if r["metrics"].get(BASELINE, {}).get(f"n{n}.{model}.{key}") is not None]

    m = first["metrics"][BASELINE]
    models = [("fastflux", "FastFLUX")]
    for key, matched in MATCHED.items():
        if vals(key, "fid"):
            models += [(f"{key}_untuned", f"L1 at the same {matched}, not fine-tuned"),
                       (key, f"L1 at the same {matched} + fine-tuning")]
    shown = [k for k in METRICS if any(vals(model, k) for model, _ in models)] or ["fid"]
    n_blocks = m.get(f"n{n}.n_blocks")
    of = f"{n} of {n_blocks} blocks replaced ({n / n_blocks:.1%})" if n_blocks else f"{n} blocks replaced"
    lines = [f"### {recipe}: {of}, ratio {m[f'n{n}.ratio']:.0%} requested", "",
             "| model | " + " | ".join(METRICS[k] for k in shown) + " | FLOPs ratio | latency ratio (this CPU) | parameters |",
             "|---|" + "---|" * (len(shown) + 3)]
    for model, label in models:
        tuned = model.removesuffix("_untuned")
        cells = [_cell(vals(model, k)) for k in shown]
        flops = vals(tuned, "flops_ratio")
        lat = [x for x in (_latency(r, BASELINE, TIMING_BASELINE, f"n{n}.{model}") for r in by_seed.values())
               if x is not None] if not model.endswith("_untuned") else []
        size = f"{m[f'n{n}.{tuned}.params']:,}" if model != "fastflux" else "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {statistics.fmean(flops):.3f} | {_pm(lat) if lat else '—'} | {size} |")
    budget = (f"Fine-tuning budget: {m[f'n{n}.l1.train_steps']} AdamW steps × {m[f'n{n}.l1.batch_size']} samples "
              f"of the training store (the sandwiches' steps × batch of the chain this FastFLUX model comes from, and "
              f"the finisher's), {m[f'n{n}.l1.finetune']} fine-tuning on the {m.get(f'n{n}.l1.objective', 'global')} "
              f"objective: {m[f'n{n}.l1.trainable_params']:,} trainable "
              f"parameters (of {m[f'n{n}.l1.params_base']:,} in the base); at the same FLOPs every MLP keeps "
              f"{m[f'n{n}.l1.kept_share']:.1%} of its hidden units (rounded to multiples of baseline.round_to). "
              f"Held-out distillation error (relative, held-out training prompts) "
              f"{_pm(vals('l1', 'holdout_loss_init'))} before → {_pm(vals('l1', 'holdout_loss_trained'))} after.")
    secs = [r["metrics"].get(TIMING_BASELINE, {}).get(f"n{n}.l1.finetune_seconds") for r in by_seed.values()]
    secs = [x for x in secs if x is not None]
    lines += ["", budget + (f" Wall-clock: {_pm(secs)} s." if secs else ""), ""]
    grid = read_image(repo, first.get("rev"), f"data/baseline/grid_n{n}.png")
    if grid is not None:
        file = f"baseline_grid_{name}_n{n}.png"
        with atomic_file(out / file) as tmp:
            grid.save(tmp, format="PNG")
        lines += [f"{_replicate(min(by_seed))} (prompt | full model | FastFLUX | L1 models):", "",
                  f"![baseline at {n} blocks]({file})", ""]
    a = vals("fastflux", "fid")
    plotted[f"{recipe}, {n}"] = {"FastFLUX": a, **{f"L1, {matched}": vals(key, "fid") for key, matched in MATCHED.items()}}
    seen = []
    for key, matched in MATCHED.items():
        b = vals(key, "fid")
        if not b:
            continue
        reps = [rep for rep, r in by_seed.items() if r["metrics"].get(BASELINE, {}).get(f"n{n}.{key}.fid") is not None]
        ours = [by_seed[rep]["metrics"][BASELINE][f"n{n}.fastflux.fid"] for rep in reps]  # the same runs as b
        r = baseline_verdict(ours, b, [by_seed[rep] for rep in reps], n, key, items)
        seen.append(r["verdict"])
        lines += [f"- FastFLUX better than L1 at the same {matched} + fine-tuning with {n} blocks replaced (FID vs full "
                  f"model): advantage {r['advantage_mean']:.4g} ± {r['advantage_std']:.2g} {_over(r, reps)} (per run "
                  f"{', '.join(f'{d:.3g}' for d in r['per_seed'])}), paired t p = {r['p']:.3g}"
                  + (f"; {_items_text(r)}" if items is not None else "") + f" → **{r['verdict']}**"]
    return lines + [""], seen


def baseline_verdict(ours: list[float], l1: list[float], runs: list[dict], n: int, key: str,
                     items: Items | None) -> dict:
    """FastFLUX against the L1 model ``key`` at ``n`` blocks over ``runs`` (paired by base and seed),
    with the interval over evaluation prompts when ``items`` can read the runs' item files."""
    r = paired(ours, l1, bases=[run.get("base", 0) for run in runs])
    if items is None:
        return r
    files = (f"data/baseline/items_n{n}_fastflux.safetensors", f"data/baseline/items_n{n}_{key}.safetensors")
    return with_items(r, items.interval([(run.get("rev"), files[0], run.get("rev"), files[1]) for run in runs]))


# the L1 models of a baseline run: record key → what it is matched on
MATCHED = {"l1": "FLOPs", "l1_latency": "latency"}


def _t_interval(r: dict, k: int) -> str:
    """A :func:`paired` result's mean advantage with its 95 % t-interval over ``k`` runs."""
    from scipy.stats import t as student_t

    if k < 2:
        return f"{r['advantage_mean']:.3g}"
    half = student_t.ppf(0.975, k - 1) * r["advantage_std"] / k ** 0.5
    return f"{r['advantage_mean']:.3g} [{r['advantage_mean'] - half:.3g}, {r['advantage_mean'] + half:.3g}]"


def headline(runs: list[dict], replicates: list[tuple[int, int]], latency_match: dict | None = None,
             items: Items | None = None) -> list[str]:
    """The table a user decides on, first in the report: each FastFLUX recipe of the baseline
    experiment against L1 width pruning fine-tuned with the same budget, matched on FLOPs and — when
    measured — on latency at FLUX.1-dev's width, per ratio: FID vs the full model over runs (each
    run's own 95 % item interval, averaged, beside it), FastFLUX's paired advantage with its 95 %
    t-interval over runs, how many bases agree, and which is better (the paired verdict, whichever way
    it goes)."""
    rows = ["| FastFLUX recipe | L1 matched on | blocks replaced | FLOPs ratio FastFLUX / L1 | FID vs full: FastFLUX | "
            "FID vs full: L1 + fine-tuning | FastFLUX's advantage, 95 % CI over runs | … over prompts | bases agreeing | "
            "better |", "|---|---|---|---|---|---|---|---|---|---|"]
    budget = None
    for v in EXPERIMENTS["baseline"].variants:
        by = {rep: r for rep, r in _by_replicate(runs, v.name).items() if rep in replicates and r["metrics"].get(BASELINE)}
        if not by:
            continue
        first = next(iter(by.values()))["metrics"][BASELINE]
        budget = budget or first.get(f"n{min(int(k.split('.')[0][1:]) for k in first)}.l1.finetune")
        for n in sorted({int(k.split(".")[0][1:]) for k in first}):
            for key, matched in MATCHED.items():
                reps = [rep for rep, r in by.items() if r["metrics"][BASELINE].get(f"n{n}.{key}.fid") is not None]
                if not reps:
                    continue
                m = [by[rep]["metrics"][BASELINE] for rep in reps]
                ours, l1 = [x[f"n{n}.fastflux.fid"] for x in m], [x[f"n{n}.{key}.fid"] for x in m]
                r = baseline_verdict(ours, l1, [by[rep] for rep in reps], n, key, items)

                def fid_cell(model: str, vals: list[float]) -> str:
                    widths = [(x[f"n{n}.{model}.fid_ci_high"] - x[f"n{n}.{model}.fid_ci_low"]) / 2 for x in m
                              if f"n{n}.{model}.fid_ci_high" in x]
                    return _pm(vals) + (f" (items ±{statistics.fmean(widths):.2g})" if widths else "")

                n_blocks = m[0].get(f"n{n}.n_blocks")
                what = f"{n} of {n_blocks} ({n / n_blocks:.0%})" if n_blocks else str(n)
                better = {"supports": "FastFLUX", "contradicts": "L1 + fine-tuning"}.get(r["verdict"], "neither (within the spread)")
                flops = f"{statistics.fmean(x[f'n{n}.fastflux.flops_ratio'] for x in m):.3f} / " \
                        f"{statistics.fmean(x[f'n{n}.{key}.flops_ratio'] for x in m):.3f}"
                over_items = "—" if r.get("items") is None else f"[{r['items'][0]:.3g}, {r['items'][1]:.3g}]"
                rows.append(f"| {v.label} | {matched} | {what} | {flops} | {fid_cell('fastflux', ours)} | "
                            f"{fid_cell(key, l1)} | {_t_interval(r, len(reps))} | {over_items} | "
                            f"{r['bases_agree']} of {r['bases']} | **{better}** |")
    if budget is None:
        return []
    return ["## FastFLUX or L1 width pruning?", "",
            f"The L1 model is fine-tuned ({budget}) for as many steps of the same batch as FastFLUX's sandwiches "
            f"(and finisher) took, each model keeping its best held-out state, each learning rate as its "
            f"recipe sets it (the L1 model's by its own probe); FID against the full model's images, lower is "
            f"better; advantage = L1's FID − FastFLUX's, paired by base and seed, with its interval over runs and "
            f"over evaluation prompts (delete-one-prompt jackknife of the mean over runs); 'better' needs both to "
            f"exclude 0 and every base to agree. Matched on FLOPs: the same "
            f"forward FLOPs as the FastFLUX model. Matched on latency: the FLOPs cut at which an L1 model is "
            f"as fast as a FastFLUX model at FLUX.1-dev's width (below) — this tiny model's own CPU latency "
            f"does not show width pruning's speed.", "", *rows, "", *latency_lines(latency_match), ""]


def latency_lines(match: dict | None) -> list[str]:
    """What ``benchmarks/latency_match.py`` measured at FLUX.1-dev's width, as a table."""
    if not match:
        return ["No latency match was measured (`python benchmarks/latency_match.py`): L1 is matched on FLOPs only."]
    cfg = match["config"]
    lines = [f"Latency at FLUX.1-dev's width (`benchmarks/latency_match.py`: {cfg['double']} double + {cfg['single']} "
             f"single blocks of hidden 3072, {cfg['dtype']}, {cfg['size']}² with {cfg['text_tokens']} text tokens, "
             f"random weights, this CPU, {cfg['threads']} threads, A B B A medians of {cfg['repeats']} calls):", "",
             "| FastFLUX replaces | FLOPs ratio | latency ratio | L1 as fast: kept share | its FLOPs ratio | "
             "its latency ratio | FLOPs cut ×  |", "|---|---|---|---|---|---|---|"]
    for name, o in match["fastflux"].items():
        m = match["l1_matched"][name]
        tail = (f"{m['share']:.3f} | {m['flops_ratio']:.3f} | {m['latency_ratio']:.3f} ± {m['latency_ratio_iqr']:.2g} | "
                f"{m['cut_factor']:.2f}" if m["reachable"] else "not reached | | |")
        lines.append(f"| {name} | {o['flops_ratio']:.3f} | {o['latency_ratio']:.3f} ± {o['latency_ratio_iqr']:.2g} | {tail} |")
    if match.get("cut_factor"):
        lo, hi = match["cut_factor_range"]
        lines += ["", f"An L1 model must remove {match['cut_factor']:.2f}× (range {lo:.2f}–{hi:.2f}) the FLOPs FastFLUX "
                  f"removes to be as fast (± is the IQR of per-round ratios); the latency-matched L1 models above "
                  f"use {match['cut_factor']:.3f}."]
    return lines


def _replicate(rep: tuple[int, int]) -> str:
    return f"Base {rep[0]}, seed {rep[1]}"


def grid_image(runs: list[dict], exp: Experiment, seed: tuple[int, int], repo: Path) -> Image.Image | None:
    """Each variant's evaluate grid (prompt | full model | pruned) of one replicate (base, seed), side
    by side, labelled."""
    tiles = []
    for v in exp.variants:
        run = _by_replicate(runs, v.name).get(seed)
        img = read_image(repo, run and run.get("rev"), "data/evaluate/grid.png")
        if img is None:
            continue
        head = Image.new("RGB", (img.width, 18), "white")
        ImageDraw.Draw(head).text((4, 3), v.label, fill="black")
        tile = Image.new("RGB", (img.width, img.height + 18), "white")
        tile.paste(head, (0, 0))
        tile.paste(img, (0, 18))
        tiles.append(tile)
    if not tiles:
        return None
    out = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 8
    return out


def sample_size_note(n: int | None) -> str:
    """What ``n`` evaluation images can and cannot resolve, in numbers a reader can check."""
    if not n:
        return "Sample size: unknown (no evaluate record)."
    se = (0.9 * 0.1 / n) ** 0.5
    return (f"Sample size: {n} evaluation images per model, the same items (prompts, seeds, initial noise) for "
            f"every variant, so item-to-item variation is shared and cancels largely in the paired differences "
            f"the verdicts test. Prompt accuracy near 0.9 is a share of {n} images: its binomial standard error "
            f"is {se:.3f}, so accuracy differences below ~{2 * se:.2f} are within what the item sample alone "
            f"could produce. Each run's evaluate record carries 95 % intervals over these items "
            f"(`fid_ci_low`/`_high`, …) and FID's floor (the full model against itself on other seeds) with the "
            f"excess above it (column 'FID above its floor'); the verdicts below pair runs, not items, so a small "
            f"FID difference could still change on another evaluation set even where every run agrees.")


def _items_of(repo: Path) -> Items | None:
    """The experiments' item files, read at their revisions (the evaluation set's images per prompt
    from the repo's params.yaml: no experiment changes the evaluation set)."""

    params = repo / "params.yaml"
    if not params.is_file():
        return None
    return Items(repo, yaml.safe_load(params.read_text())["prompts"]["evaluation"]["images_per_prompt"])


# What params.yaml's defaults follow: pairs (a, b) of EXPERIMENTS' claims whose variants differ in one
# params key, b the cheaper. a's value is picked only where "a better than b" is supported; otherwise b's:
# the recipe's options are taken only when shown better than the paper's recipe, and capture keeps the
# paper's trajectories only when they are shown better than the noised inputs that cost a fraction
# (issue 28) — either way, the burden of proof is on the costlier choice. The key and both values come
# from the variants' overrides (a variant without one runs the paper's value, experiments.PAPER_RECIPE).
DEFAULT_CHOICES = (("st-auto", "brll-st"), ("temb", "brll-st"), ("finish", "brll-st"), ("brll-st", "noised"))


def _choice(a: str, b: str) -> tuple[str, object, object]:
    """(the one key variants a and b differ in, a's value, b's value) — as the runs set them."""
    overrides = {v.name: v.overrides for e in EXPERIMENTS.values() for v in e.variants}
    (key,) = overrides[a].keys() | overrides[b].keys()
    return key, overrides[a].get(key, PAPER_RECIPE[key]), overrides[b].get(key, PAPER_RECIPE[key])


def _params_of(repo: Path) -> dict:
    f = repo / "params.yaml"
    return yaml.safe_load(f.read_text()) if f.is_file() else {}


def default_lines(found: dict[tuple[str, str], str], params: dict) -> list[str]:
    """The defaults the evidence picks, beside params.yaml's: for each of :data:`DEFAULT_CHOICES` whose
    pair was run, the verdict and the value it implies; a line saying which keys differ.

    >>> print("\\n".join(default_lines({("temb", "brll-st"): "supports"}, {"solve": {"condition": "none"}})))
    ## What params.yaml's defaults follow
    <BLANKLINE>
    | key | params.yaml | evidence | the evidence picks |
    |---|---|---|---|
    | `solve.condition` | none | temb better than brll-st: supports | temb |
    <BLANKLINE>
    params.yaml differs from the evidence at: `solve.condition`.
    <BLANKLINE>
    """
    rows, differ = [], []
    for a, b in DEFAULT_CHOICES:
        if (a, b) not in found:
            continue
        key, value_a, value_b = _choice(a, b)
        pick = value_a if found[(a, b)] == "supports" else value_b
        section, name = key.split(".")
        now = params.get(section, {}).get(name, "—")
        rows.append(f"| `{key}` | {now} | {a} better than {b}: {found[(a, b)]} | {pick} |")
        if str(now) != str(pick):
            differ.append(f"`{key}`")
    if not rows:
        return []
    return ["## What params.yaml's defaults follow", "", "| key | params.yaml | evidence | the evidence picks |",
            "|---|---|---|---|", *rows, "",
            (f"params.yaml differs from the evidence at: {', '.join(differ)}." if differ
             else "params.yaml follows the evidence."), ""]


def write_report(results: dict, repo: Path, out: Path) -> str:
    """Tables, plots, grids and verdicts → ``out/README.md`` (returned)."""
    out.mkdir(parents=True, exist_ok=True)
    runs = results["runs"]
    seeds = [(b, s) for b in results.get("bases", [0]) for s in results["seeds"]]  # replicates: (base, seed)
    items = _items_of(repo) if any(r.get("rev") for r in runs) else None
    any_eval = next((r["metrics"].get(EVALUATE) for r in runs if r["metrics"].get(EVALUATE)), {})
    head = ["# FastFLUX experiments report", "",
             "Generated by `bash scripts/report.sh` (`python -m fastflux_core.experiments` then "
             "`python -m fastflux_core.report`) from `dvc exp show --json`; do not edit by hand.", "",
             f"Seeds (params.yaml `seed`, the pruning's randomness): {results['seeds']}; embedded bases "
             f"(`embedded.seed`, each a base model trained from its own seed; prompt sets fixed): "
             f"{results.get('bases', [0])}. "
             f"Evaluation images per run: {any_eval.get('eval_images', '?')}. Each variant prunes the whole "
             f"chain (ratio = max_ratio) unless noted. Quality: FID against the full model's images (primary, "
             f"lower is better), FID against real images, alignment ({any_eval.get('clip_kind', '?')}) and the "
             f"judge's prompt accuracy. Verdicts: paired t-test over runs (the same base and seed for both "
             f"variants) on the primary metric, p < 0.05, and every base's mean difference of the same sign.", "",
            "Reading these numbers: every variant is scored on the same evaluation items with the same feature "
            "extractor, so FID's small-sample bias is shared and differences are comparable; the spread is over "
            "runs — pruning seeds, and embedded bases for the experiments run on several — not over evaluation "
            "items (each run's own item intervals are in its evaluate record). On one base a variant with nothing "
            "random left has zero spread (least squares sees every token, so the untrained variants are "
            "deterministic given the base). Latency: ratio of median forward times, base and pruned "
            "interleaved; the runs ran two at a time, so their latencies are noisy, but the sweep's reuse runs "
            "(Table 6's latency) ran alone; a run whose evaluate stage DVC restored from its run-cache shows none.", "",
            sample_size_note(any_eval.get("eval_images")), ""]
    lines, summary, found = [], [], {}
    for key in results["experiments"]:
        exp = EXPERIMENTS[key]
        labels = {v.name: v.label for v in exp.variants}
        lines += [f"## {exp.title}", "", f"Paper: {exp.claim}", ""]
        if exp.kind == "sweep":
            sweep_lines, overall = sweep_section(exp, runs, out)
            lines += sweep_lines
            claim_lines = []
        elif exp.kind == "family":
            family_lines, overall = family_section(exp, runs)
            lines += family_lines
            claim_lines = []
        elif exp.kind == "baseline":
            baseline_lines, overall = baseline_section(exp, runs, seeds, repo, out, items)
            lines += baseline_lines
            claim_lines = []
        else:
            rows, values = variant_table(exp, runs, seeds)
            lines += [*rows, ""]
            if values:
                bar_plot(exp, values, out / f"{key}.png")
                lines += [f"![{key}]({key}.png)", ""]
            claim_lines, overall = verdict_lines(exp, values, labels, items, found)
        if key == "importance":
            lines += _importance_lines(runs, repo, out)
        grid = grid_image(runs, exp, seeds[0], repo) if exp.kind == "variants" else None
        if grid is not None:
            with atomic_file(out / f"{key}_grid.png") as tmp:
                grid.save(tmp, format="PNG")
            lines += [f"{_replicate(seeds[0])}, each variant's evaluation grid (prompt | full model | pruned):", "",
                      f"![{key} images]({key}_grid.png)", ""]
        lines += claim_lines + ["", f"**Verdict: {overall}.**", ""]
        summary.append(f"| {exp.title} | {overall} |")
    lines += default_lines(found, _params_of(repo))
    lines = head[:4] + headline(runs, seeds, results.get("latency_match"), items) + head[4:] + ["| experiment | verdict |", "|---|---|", *summary, ""] + lines
    text = "\n".join(lines) + "\n"
    with atomic_file(out / "README.md") as tmp:
        tmp.write_text(text)
    return text


def _importance_lines(runs: list[dict], repo: Path, out: Path) -> list[str]:
    """Spearman of the proxy against Eq. 2 (rank stage) and the per-block scores of the paper's recipe,
    both from its first run (its ranking read at its revision, as every output the report shows)."""
    lines = []
    first = next((r for r in runs if r["variant"] == "brll-st"), None)
    rank = first["metrics"].get("data/metrics/rank.json", {}) if first else {}
    if rank.get("spearman_proxy") is not None:
        lines.append(f"Spearman correlation of the proxy's block ranking with Eq. 2's (stage rank, importance set): "
                     f"{rank['spearman_proxy']:.3f}. Its spread over importance-set seeds is measured by "
                     f"`python benchmarks/importance_cost.py`.")
    ranking = run_file(repo, first and first.get("rev"), "data/rank/ranking.json")
    if ranking is not None:
        importance_plot(json.loads(ranking), out / "importance_scores.png")
        lines += ["", f"Importance per block ({first['name']}):", "", "![importance per block](importance_scores.png)", ""]
    return lines


def main(argv: list[str] | None = None, prog: str = "python -m fastflux_core.report") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="report/results.json")
    ap.add_argument("--out", default="report")
    args = ap.parse_args(argv)
    results = read_json_option(args.results, "--results")
    if not isinstance(results.get("runs"), list):
        raise FastFluxError(f"--results {args.results} holds no runs: write it with python -m fastflux_core.experiments")
    write_report(results, Path.cwd(), Path(args.out))
    print(f"report → {Path(args.out) / 'README.md'}")


if __name__ == "__main__":
    from fastflux_core.cli import run_command

    run_command(main)
