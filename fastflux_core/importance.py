"""Block importance (paper §3.2 "Calculating Block Importance", Eq. 2, Algorithm 1's first loop).

For each block B_i: remove it (its output := its input; :class:`~fastflux_core.adapter.SkipBlock`),
generate the importance prompt set with the reference seeds, and score FID and a CLIP-style
alignment. Over all blocks, min–max normalise both and score

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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastflux_core.adapter import adapter_for
from fastflux_core.errors import FastFluxError
from fastflux_core.io import image_grid, load_tensors, read_json, save_png, save_tensors, write_json
from fastflux_core.metrics import FeatureStats, Quality, fid, folder_features, image_features, load_quality, real_features
from fastflux_core.params import ImportanceParams, Params
from fastflux_core.prompts import GenItem, PromptEmbeds, prompt_items
from fastflux_core.sampling import sample_latents
from fastflux_core.source import load_codec, load_scheduler, load_transformer, resolve_device


# ----------------------------------------------------------------------------- Eq. 2 and ordering


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


# ----------------------------------------------------------------------------- generation


@dataclass
class Generated:
    latents: torch.Tensor  # (N, C, h, w) final latents
    images: np.ndarray  # (N, H, W[, 3]) uint8
    prompts: list[str]  # prompt of each image


def importance_items(params: Params, n_prompts: int, proxy_only: bool) -> list[GenItem]:
    """The importance set's items; the proxy method uses only the first rounds (same seeds)."""
    s = params.prompts.importance
    per_prompt = min(params.importance.proxy_images_per_prompt, s.images_per_prompt) if proxy_only else s.images_per_prompt
    return prompt_items(n_prompts, per_prompt, s.seed)


def generate(params: Params, embeds: PromptEmbeds, items: list[GenItem], skip: int | None = None) -> Generated:
    """Generate ``items`` with the base model, block ``skip`` removed if given."""
    model = load_transformer(params)
    if skip is not None:
        adapter = adapter_for(model)
        if not 0 <= skip < len(adapter.blocks):
            raise FastFluxError(f"block {skip} does not exist: the model has {len(adapter.blocks)} blocks")
        adapter.skip(skip)
    codec = load_codec(params, model)
    latents = sample_latents(model, load_scheduler(params), embeds, items, params.sampling,
                             codec.latent_channels, codec.scale_factor)
    return Generated(latents, codec.decode(latents), [embeds.prompts[it.prompt] for it in items])


def latent_error(latents: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Proxy: MSE and mean per-image cosine similarity of final latents against the reference's."""
    a, b = latents.flatten(1).double(), reference.flatten(1).double()
    return {
        "proxy_mse": float(((a - b) ** 2).mean()),
        "proxy_cos": float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean()),
    }


def score_images(gen: Generated, quality: Quality, ref_model: FeatureStats, ref_real: FeatureStats | None,
                 device: torch.device, batch_size: int) -> dict[str, float]:
    """FID against the full model's images (and real images) and the alignment score."""
    feats = image_features(gen.images, quality.features, device, batch_size)
    out = {"fid": fid(feats, ref_model), quality.alignment.name: quality.alignment.score(gen.images, gen.prompts)}
    if ref_real is not None:
        out["fid_real"] = fid(feats, ref_real)
    return out


# ----------------------------------------------------------------------------- stages' work


def make_reference(params: Params, embeds: PromptEmbeds, out: Path) -> dict:
    """Stage ``reference``: the full model's images for the importance set (PNGs, final latents) and
    feature statistics of those and of real images, which every ablation is scored against."""
    device = resolve_device(params.model.device)
    t0 = time.perf_counter()
    gen = generate(params, embeds, importance_items(params, len(embeds.prompts), proxy_only=False))
    (out / "images").mkdir()
    for i, img in enumerate(gen.images):
        save_png(out / "images" / f"{i:05d}.png", img)
    save_png(out / "grid.png", image_grid(gen.images[: 4 * len(embeds.prompts)], cols=len(embeds.prompts),
                                          scale=max(1, 64 // gen.images.shape[1])))
    save_tensors(out / "latents.safetensors", {"latents": gen.latents})
    quality = load_quality(params, device)
    feats = folder_features(out / "images", quality.features, device, params.metrics.batch_size)
    FeatureStats.of(feats).save(out / "stats_model.safetensors")
    record = {"images": len(gen.images), quality.alignment.name: quality.alignment.score(gen.images, gen.prompts)}
    real = real_features(params.metrics.real_images, quality.features, device, params.metrics.batch_size)
    if real is not None:
        stats = FeatureStats.of(real)
        stats.save(out / "stats_real.safetensors")
        record["fid_real"] = fid(feats, stats)
        record["real_images"] = len(real)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def ablate_block(params: Params, index: int, embeds: PromptEmbeds, reference: Path, out: Path) -> dict:
    """Stage ``ablate@index``: skip block ``index``, generate, score. Returns the block's record."""
    device = resolve_device(params.model.device)
    t0 = time.perf_counter()
    proxy_only = params.importance.method == "proxy"
    items = importance_items(params, len(embeds.prompts), proxy_only)
    gen = generate(params, embeds, items, skip=index)
    ref_latents = load_tensors(reference / "latents.safetensors")["latents"][: len(items)]
    record: dict = {"block": index, "images": len(items), **latent_error(gen.latents, ref_latents)}
    if not proxy_only:
        quality = load_quality(params, device)
        real = reference / "stats_real.safetensors"
        record.update(score_images(gen, quality, FeatureStats.load(reference / "stats_model.safetensors"),
                                   FeatureStats.load(real) if real.is_file() else None, device,
                                   params.metrics.batch_size))
    n = len(embeds.prompts)
    save_png(out / "grid.png", image_grid(gen.images[: 2 * n], cols=n, scale=max(1, 64 // gen.images.shape[1])))
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def rank(records: list[dict], blocks: list[dict], cfg: ImportanceParams) -> dict:
    """Stage ``rank``: Eq. 2 (or the proxy) over every block's record → the replacement order.

    ``records``: one per block, as :func:`ablate_block` wrote them; ``blocks``: index/kind/name of every
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
    """CSV files for the DVC plot: importance per block in ascending order, one file per block kind
    (paper Fig. 8: double and single blocks distinguished)."""
    rows = sorted(ranking["blocks"], key=lambda r: r["rank"])
    for kind in ("double", "single"):
        lines = ["position,block,name,score"] + [
            f"{r['rank']},{r['index']},{r['name']},{r['score']:.6g}" for r in rows if r["kind"] == kind]
        (out / f"importance_{kind}.csv").write_text("\n".join(lines) + "\n")


def plot_png(ranking: dict, path: Path) -> None:
    """Static PNG of the importance plot (paper Fig. 8) for readers without a DVC plot viewer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(ranking["blocks"], key=lambda r: r["rank"])
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.15), 3.2), dpi=120)
    for kind, color in (("double", "#e0a800"), ("single", "#1f77b4")):
        pts = [(r["rank"], r["score"]) for r in rows if r["kind"] == kind]
        if pts:
            ax.scatter(*zip(*pts), s=18, c=color, label=f"{kind} block")
    for share in (0.1, 0.2, 0.3):
        ax.axvline(share * len(rows) - 0.5, ls="--", lw=0.8, c="grey")
    ax.set_xlabel("blocks sorted by importance (0 = replaced first)")
    ax.set_ylabel("importance score $s_i$")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_records(folder: Path) -> list[dict]:
    """Every ablation record under ``folder`` (``<index>/metrics.json``)."""
    files = sorted(folder.glob("*/metrics.json"))
    if not files:
        raise FastFluxError(f"no ablation results under {folder}: run the ablate stages first")
    return [read_json(f) for f in files]  # type: ignore[misc]


def write_ranking(ranking: dict, out: Path) -> None:
    write_json(out / "ranking.json", ranking)
    write_plot_data(ranking, out)
    plot_png(ranking, out / "importance.png")
