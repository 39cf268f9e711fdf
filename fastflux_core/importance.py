"""Block importance (paper §3.2 "Calculating Block Importance", Eq. 2, Algorithm 1's first loop).

For each block B_i, :mod:`fastflux_core.ablation` removes it, generates the importance prompt set with
the reference seeds, and scores FID and a CLIP-style alignment. Over all blocks, min–max normalise both and score

    s_i = −(α · (1 − FID_norm_i) + β · CLIP_norm_i)            (Eq. 2)

Low s_i: removing B_i barely hurts, so B_i is replaced early. Blocks are sorted by s ascending
(ties: lower block index first).

Cheap proxy: the error of B_i-skipped final latents against the full model's, same seeds (MSE and
cosine). It needs no feature extractor and far fewer images; its ranking is compared to Eq. 2's by
Spearman correlation, and ``importance.method: proxy`` ranks by it alone.

>>> fid_n, clip_n, s = importance_scores([10.0, 30.0, 20.0], [0.9, 0.5, 0.7], alpha=0.5, beta=0.5)
>>> [round(float(v), 3) for v in s]
[-1.0, 0.0, -0.5]
>>> order_blocks(s, "importance")
[0, 2, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastflux_core.errors import FastFluxError
from fastflux_core.io import atomic_file, read_json, write_json
from fastflux_core.params import ImportanceParams


def minmax(x: Sequence[float]) -> np.ndarray:
    """Min–max normalise to [0, 1]; all-equal values map to 0 (no block is distinguishable)."""
    x = np.asarray(x, dtype=np.float64)
    span = x.max() - x.min()
    return np.zeros_like(x) if span == 0 else (x - x.min()) / span


def importance_scores(
    fid: Sequence[float], clip: Sequence[float], alpha: float, beta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FID_norm, CLIP_norm, s) per block, Eq. 2."""
    fid_n, clip_n = minmax(fid), minmax(clip)
    return fid_n, clip_n, -(alpha * (1.0 - fid_n) + beta * clip_n) + 0.0  # + 0.0: no "-0.0" in JSON


def order_blocks(scores: Sequence[float], order: str) -> list[int]:
    """Block indices in replacement order: by ascending score (stable), or by depth (paper Table 5)."""
    n = len(scores)
    if order == "start2end":
        return list(range(n))
    if order == "end2start":
        return list(range(n - 1, -1, -1))
    return [int(i) for i in np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def rank(records: list[dict], blocks: list[dict], cfg: ImportanceParams) -> dict:
    """Stage ``rank``: Eq. 2 (or the proxy) over every block's record → the replacement order.

    ``records``: one per block, as :func:`fastflux_core.ablation.ablate_block` wrote them; ``blocks``: index/kind/name of every
    block of the model, in order.
    """
    by_index = {r["block"]: r for r in records}
    if sorted(by_index) != [b["index"] for b in blocks]:
        raise FastFluxError(
            f"ablation results cover blocks {sorted(by_index)}, but the model has blocks 0..{len(blocks) - 1}"
        )
    recs = [by_index[b["index"]] for b in blocks]
    mse = [r["proxy_mse"] for r in recs]
    proxy_scores = minmax(mse)  # more latent error when removed → more important
    table = [{**b, "proxy_mse": r["proxy_mse"], "proxy_cos": r["proxy_cos"], "proxy_score": float(p)}
             for b, r, p in zip(blocks, recs, proxy_scores)]
    result: dict = {"method": cfg.method, "order_kind": cfg.order, "alpha": cfg.alpha, "beta": cfg.beta}
    if cfg.method == "fid_clip":
        align_key = next(k for k in ("clip_score", "judge_alignment") if k in recs[0])
        fid_key = "fid" if cfg.fid_against == "model" else "fid_real"
        if fid_key not in recs[0]:
            raise FastFluxError(f"ablation results have no {fid_key!r} (importance.fid_against={cfg.fid_against})")
        fid_n, clip_n, scores = importance_scores([r[fid_key] for r in recs], [r[align_key] for r in recs],
                                                  cfg.alpha, cfg.beta)
        for row, r, fn, cn, s in zip(table, recs, fid_n, clip_n, scores):
            row.update({"fid": r[fid_key], "fid_norm": float(fn), "clip": r[align_key], "clip_norm": float(cn),
                        "score": float(s), "fid_model": r["fid"], "fid_real": r.get("fid_real")})
        result.update(fid_key=fid_key, clip_key=align_key,
                      spearman_proxy=spearman(proxy_scores, scores) if len(recs) > 2 else None)
    else:
        scores = proxy_scores
        for row in table:
            row["score"] = row["proxy_score"]
    order = order_blocks(scores, cfg.order)
    by_importance = order_blocks(scores, "importance")
    for position, i in enumerate(by_importance):
        table[i]["rank"] = position  # 0 = least important
    result.update(order=order, blocks=table)
    return result


def write_plot_data(ranking: dict, out: Path) -> None:
    """The CSV for the DVC plot: importance per block in ascending order, with each block's kind
    (paper Fig. 8 distinguishes FLUX's double and single blocks; SD3's are joint and final)."""
    rows = sorted(ranking["blocks"], key=lambda r: r["rank"])
    lines = ["position,block,name,kind,score"] + [
        f"{r['rank']},{r['index']},{r['name']},{r['kind']},{r['score']:.6g}" for r in rows]
    with atomic_file(out / "importance.csv") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def plot_png(ranking: dict, path: Path) -> None:
    """Static PNG of the importance plot (paper Fig. 8) for readers without a DVC plot viewer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(ranking["blocks"], key=lambda r: r["rank"])
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.15), 3.2), dpi=120)
    for kind, color in zip(dict.fromkeys(r["kind"] for r in sorted(rows, key=lambda r: r["index"])),
                           ("#e0a800", "#1f77b4", "#2ca02c", "#d62728")):
        pts = [(r["rank"], r["score"]) for r in rows if r["kind"] == kind]
        if pts:
            ax.scatter(*zip(*pts), s=18, c=color, label=f"{kind} block")
    for share in (0.1, 0.2, 0.3):
        ax.axvline(share * len(rows) - 0.5, ls="--", lw=0.8, c="grey")
    ax.set_xlabel("blocks sorted by importance (0 = replaced first)")
    ax.set_ylabel("importance score $s_i$")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def load_records(folder: Path) -> list[dict]:
    """Every ablation record under ``folder`` (``<index>/metrics.json``)."""
    files = sorted(f for f in folder.glob("*/metrics.json") if not f.parent.name.startswith("."))  # no temp dirs
    if not files:
        raise FastFluxError(f"no ablation results under {folder}: run the ablate stages first")
    return [read_json(f) for f in files]  # type: ignore[misc]


def write_ranking(ranking: dict, out: Path) -> None:
    """ranking.json, plot CSVs and PNG, each written atomically (the folder also holds DVC's .gitignore)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ranking.json", ranking)
    write_plot_data(ranking, out)
    plot_png(ranking, out / "importance.png")
