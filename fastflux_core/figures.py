"""The report's figures: bar plots of FID per variant over runs, grouped bars, the importance plot,
and images read from an experiment's revision. matplotlib without pyplot: no global state, no backend
to choose."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from fastflux_core.experiments import Experiment, run_file
from fastflux_core.io import atomic_file
from fastflux_core.verdicts import mean_std


def bar_plot(exp: Experiment, values: dict, path: Path) -> None:
    """Mean FID (vs the full model) per variant with std error bars and each seed as a dot."""
    names = [v for v in exp.variants if v.name in values]
    fig = Figure(figsize=(1.6 + 1.3 * len(names), 3.2))
    ax = fig.subplots()
    for i, v in enumerate(names):
        xs = values[v.name]["fid"]
        m, s = mean_std(xs)
        ax.bar(i, m, yerr=s, capsize=4, color="#8fb3d9")
        ax.scatter([i] * len(xs), xs, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(names)), [v.label for v in names])
    ax.set_ylabel("FID vs full model (lower is better)")
    ax.set_title(exp.title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def grouped_bars(groups: dict[int, dict[str, list[float]]], path: Path, xlabel: str) -> None:
    """Mean FID (vs the full model) with std error bars and seeds as dots, one group per x value."""
    names = list(next(iter(groups.values())))
    fig = Figure(figsize=(2 + 1.8 * len(groups), 3.2))
    ax = fig.subplots()
    width = 0.8 / len(names)
    colors = ("#8fb3d9", "#d9c98f", "#d98f8f", "#9fd98f")
    for g, (x, series) in enumerate(groups.items()):
        for j, name in enumerate(names):
            xs = series[name]
            if not xs:
                continue
            m, sd = mean_std(xs)
            pos = g + (j - (len(names) - 1) / 2) * width
            ax.bar(pos, m, width, yerr=sd, capsize=3, color=colors[j % len(colors)], label=name if g == 0 else None)
            ax.scatter([pos] * len(xs), xs, color="k", s=8, zorder=3)
    ax.set_xticks(range(len(groups)), [str(x) for x in groups])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID vs full model (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def read_image(repo: Path, rev: str | None, path: str) -> Image.Image | None:
    """An image output of an experiment's revision (:func:`~fastflux_core.experiments.run_file`), or
    None when neither the kept copy nor DVC's cache has it: the report goes without it."""
    data = run_file(repo, rev, path)
    return None if data is None else Image.open(io.BytesIO(data)).convert("RGB")


def importance_plot(ranking: dict, path: Path) -> None:
    """Eq. 2 importance score per block (higher = more important) and the proxy's, rank-normalised."""
    blocks = ranking["blocks"]
    fig = Figure(figsize=(max(5, 0.35 * len(blocks)), 3))
    ax = fig.subplots()
    idx = [b["index"] for b in blocks]
    kinds = list(dict.fromkeys(b["kind"] for b in sorted(blocks, key=lambda b: b["index"])))
    colors = dict(zip(kinds, ("#d98f8f", "#8fb3d9", "#8fd9a0", "#d9c38f")))
    ax.bar(idx, [b["score"] for b in blocks], color=[colors[b["kind"]] for b in blocks])
    ax.set_xlabel("block (" + ", ".join(f"{n}: {k}" for k, n in zip(kinds, ("red", "blue", "green", "ochre"))) + ")")
    ax.set_ylabel("importance score s_i (Eq. 2)")
    ax.set_xticks(idx)
    fig.tight_layout()
    save_figure(fig, path)


def sweep_plot(reuse: dict, exact: dict, path: Path) -> None:
    """FID vs the share of blocks replaced, with reuse and with each step's own components; FLOPs and
    latency ratios of the reuse curve (``reuse``/``exact``: chain length → metric → values over runs)."""
    fig = Figure(figsize=(9, 3.3))
    a1, a2 = fig.subplots(1, 2)
    for name, curve, style in (("reuse", reuse, "-o"), ("exact", exact, "--s")):
        ns = sorted(curve)
        if not ns:
            continue
        m = [mean_std(curve[n]["fid"])[0] for n in ns]
        s = [mean_std(curve[n]["fid"])[1] for n in ns]
        a1.errorbar([curve[n]["ratio"][0] for n in ns], m, yerr=s, fmt=style, capsize=3, label=name)
    a1.set_xlabel("share of blocks replaced")
    a1.set_ylabel("FID vs full model")
    a1.legend()
    ns = sorted(reuse)
    a2.plot([reuse[n]["ratio"][0] for n in ns], [reuse[n]["flops_ratio"][0] for n in ns], "-o", label="FLOPs ratio")
    lat = [(reuse[n]["ratio"][0], mean_std(reuse[n]["latency_ratio"])) for n in ns if reuse[n]["latency_ratio"]]
    if lat:
        a2.errorbar([x for x, _ in lat], [m for _, (m, _) in lat], yerr=[s for _, (_, s) in lat], fmt="-s",
                    capsize=3, label="latency ratio")
    a2.set_xlabel("share of blocks replaced")
    a2.set_ylabel("pruned / full")
    a2.legend()
    fig.tight_layout()
    save_figure(fig, path)
