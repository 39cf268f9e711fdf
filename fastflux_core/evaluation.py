"""Evaluate pruned models against their base on the held-out evaluation prompts.

Quality: the pruned model generates the evaluation set with the seeds of stage ``reference@evaluation``
(the base model's images of the same items); FID against those images and against real images, the
CLIP-style alignment (see metrics.py), the preference scores configured (HPS, ImageReward), and
fidelity to the base image by image — PSNR, SSIM, LPIPS where configured (fidelity.py). No
evaluation prompt is in the calibration, training or importance sets (params validation checks
it), so nothing fitted on these items scores them.

Speed (:mod:`fastflux_core.speed`): FLOPs of one forward at the sampling resolution, counted with
attention on every device, and latency of that forward, base and pruned timed in A B B A phases. Each
model is on the device only during its own phases (placed as :func:`fastflux_core.placement.choose`
decides for this stage), so base and pruned are never on the device together.
Quality and FLOPs are deterministic and go to DVC-tracked outputs; latency is a timing, reported
separately (``data/timing``), so a re-run never changes a cached output's hash.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fastflux_core.blocks import ModelInputs
from fastflux_core.codec import LatentCodec, latent_ids
from fastflux_core.errors import tensors_digest
from fastflux_core.export import load_pruned
from fastflux_core.fidelity import Lpips, fidelity_scores
from fastflux_core.families import adapter_for
from fastflux_core.io import read_json
from fastflux_core.metrics import FeatureStats, image_features, item_scores, load_quality, preference_scorers
from fastflux_core.params import EvaluateParams, Params, SamplingParams
from fastflux_core.placement import choose, placed, resolve_device
from fastflux_core.prompts import PromptEmbeds, derive_seed, prompt_items
from fastflux_core.reference import (ITEMS_FILE, generate_with, load_item_scores, load_reference_images,
                                     load_reference_stats, save_item_scores, score_images)
from fastflux_core.sampling import latent_size
from fastflux_core.source import load_codec, load_scheduler, load_transformer
from fastflux_core.speed import count_flops, latency_phases
from fastflux_core.stage import World
from fastflux_core.stats import fid_readings, frechet_distance, mean_readings


def forward_inputs(sampling: SamplingParams, model, codec: LatentCodec, embeds: PromptEmbeds,
                   device: torch.device) -> ModelInputs:
    """Inputs of one denoising call at ``sampling``'s resolution, batch 1, mid-schedule, on ``device``."""
    dtype = model.dtype
    h, w = latent_size(sampling.height, sampling.width, codec.scale_factor)
    n_img = (h // 2) * (w // 2)
    g = torch.Generator().manual_seed(0)
    guidance = torch.full((1,), sampling.guidance_scale, device=device) if adapter_for(model).uses_guidance else None
    return ModelInputs(
        hidden_states=torch.randn(1, n_img, 4 * codec.latent_channels, generator=g).to(device, dtype),
        encoder_hidden_states=embeds.prompt_embeds[:1].to(device, dtype),
        pooled_projections=embeds.pooled[:1].to(device, dtype),
        timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
        img_ids=latent_ids(h, w, device, dtype),
        txt_ids=torch.zeros(embeds.prompt_embeds.shape[1], 3, device=device, dtype=dtype),
        guidance=guidance,
        grid=(h, w),
    )


@torch.no_grad()
def call_model(model, x: ModelInputs) -> torch.Tensor:
    return adapter_for(model).call(x)


def speed_against(base, model, x: ModelInputs, on_device: Callable, warmup: int, repeats: int) -> tuple[dict, dict]:
    """FLOPs of one forward of each and their ratio (deterministic); median and IQR (ms) of one forward
    of each, timed in A B B A phases (:func:`~fastflux_core.speed.latency_phases`); the latency ratio
    is the ratio of medians, its IQR that of the per-round ratios. ``on_device(m)`` is the context
    that holds ``m`` on the device."""
    with on_device(base):
        f_base = count_flops(lambda: call_model(base, x))
    with on_device(model):
        f = count_flops(lambda: call_model(model, x))
    b, p = latency_phases((lambda: on_device(base), lambda: on_device(model)),
                          (lambda: call_model(base, x), lambda: call_model(model, x)), warmup, repeats)
    per_round = np.asarray(p["times"]) / np.asarray(b["times"])
    q25, q75 = np.percentile(per_round, [25, 75])
    return {"flops": f, "flops_base": f_base, "flops_ratio": f / f_base}, {
        "latency_ms_base": 1e3 * b["median"], "latency_iqr_ms_base": 1e3 * b["iqr"],
        "latency_ms": 1e3 * p["median"], "latency_iqr_ms": 1e3 * p["iqr"],
        "latency_ratio": p["median"] / b["median"], "latency_ratio_iqr": float(q75 - q25), "repeats": len(p["times"])}


def item_readings(feats: np.ndarray, scores: dict[str, np.ndarray], base: dict[str, np.ndarray], n_prompts: int,
                  cfg: EvaluateParams, seed: int) -> dict[str, float]:
    """What one evaluation set says with its uncertainty (:mod:`fastflux_core.stats`): intervals over
    items of the paired FID (jackknife) and of every per-image score (bootstrap), the scores' paired change from the base
    model, and the distributional FID with its floor (the base against itself on other seeds) and the
    excess above it. ``base``: the base model's per-image features and scores of the same items."""
    out = fid_readings(frechet_distance, feats, base["features"], n_prompts, cfg.fid_intervals)
    for name, values in scores.items():
        out.update(mean_readings(name, values, cfg.bootstrap, seed, base.get(name)))
    return out


def comparison_grid(columns: dict[str, np.ndarray], prompts: list[str], rows: int, cell: int = 64) -> Image.Image:
    """Rows of ``prompt | column 1 | column 2 …`` for the first ``rows`` images (same prompt and seed);
    ``columns`` maps a heading to its images (n, H, W) in the same item order."""
    label_w = 8 + 7 * max(len(p) for p in prompts[:rows])
    img = Image.new("RGB", (label_w + len(columns) * (cell + 8) - 4, 20 + rows * (cell + 4)), "white")
    draw = ImageDraw.Draw(img)
    for c, name in enumerate(columns):
        draw.text((label_w + c * (cell + 8), 4), name, fill="black")
    for r in range(min(rows, len(prompts))):
        y = 20 + r * (cell + 4)
        draw.text((4, y + cell // 2 - 6), prompts[r], fill="black")
        for c, arr in enumerate(columns.values()):
            tile = Image.fromarray(arr[r]).convert("RGB").resize((cell, cell), Image.NEAREST)
            img.paste(tile, (label_w + c * (cell + 8), y))
    return img


class Evaluator:
    """Everything both ``evaluate`` and ``sweep`` score models with: the base model (for speed), the
    reference images and statistics of the evaluation set, the quality metrics. With several ranks
    every rank generates its share of the evaluation items; the main rank alone scores and times."""

    def __init__(self, params: Params, embeds: PromptEmbeds, reference: Path, world: World = World(),
                 n_items: int | None = None):
        self.params, self.embeds, self.device, self.world = params, embeds, resolve_device(params.model.device), world
        self.placement = choose("evaluate", params, self.device)
        # the preference workers first: a misconfigured metrics.hps_python fails in seconds, before the base loads
        preference = preference_scorers(params.metrics) if world.is_main else ()
        backbone = params.metrics.lpips_backbone  # and LPIPS's backbone file
        self.lpips = Lpips(backbone, self.device) if world.is_main and backbone is not None else None
        # the base is for timing, which rank 0 alone does: on its host, on the device only while timed (other
        # ranks do not hold it — FLUX.1-dev: 24 GB of host memory each); their codec comes with the first model
        self.base = load_transformer(params.model) if world.is_main else None
        self.codec = load_codec(params.model, self.base) if world.is_main else None
        self.scheduler = load_scheduler(params.model)
        self.quality = load_quality(params.metrics, self.device, preference) if world.is_main else None
        self.reference_dir = reference
        self.ref_model, self.ref_real = load_reference_stats(reference)
        self.reference = read_json(reference / "metrics.json")
        s = params.prompts.evaluation
        self.items = prompt_items(len(embeds.prompts), s.images_per_prompt, s.seed)
        if n_items is not None and n_items < len(self.items):
            # the first items (round-major: every prompt's first seed first), scored against the full
            # model's images of the same items
            self.items = self.items[:n_items]
            feats = load_item_scores(reference / ITEMS_FILE)["features"][:n_items]
            self.ref_model = FeatureStats.of(feats)
        # the base's images of the same items, in item order: fidelity (PSNR, SSIM, LPIPS) is against them
        self.base_images = load_reference_images(reference)[: len(self.items)] if world.is_main else None
        self.x = forward_inputs(params.sampling, self.base, self.codec, embeds, self.device) if world.is_main else None

    def on_device(self, model):
        """Context holding ``model`` on the device (resident or offloaded), on the host after."""
        return placed(model, self.device, self.placement)

    def quality_of(self, model, tag: str = "quality", items_out: Path | None = None
                   ) -> tuple[dict, np.ndarray, list[str]] | None:
        """FID (vs base, vs real), alignment, preference scores and fidelity to the base (PSNR, SSIM,
        LPIPS) of ``model``'s images of the evaluation items (on the main rank; ``None`` on the
        others). ``tag`` names the exchange of images between ranks. With ``items_out``: also the
        readings over items (:func:`item_readings`), and the per-image features and scores written there."""

        if self.codec is None:
            self.codec = load_codec(self.params.model, model)
        with self.on_device(model):
            gen = generate_with(model, self.scheduler, self.codec, self.embeds, self.items, self.params.sampling,
                                self.world, tag)
        if gen is None:
            return None
        feats = image_features(gen.images, self.quality.features, self.device, self.params.metrics.batch_size)
        q = score_images(gen.images, gen.prompts, self.quality, self.ref_model, self.ref_real, self.device,
                         self.params.metrics.batch_size, feats=feats)
        q["clip"] = q.pop(self.quality.alignment.name)
        scores = item_scores(self.quality, gen.images, gen.prompts)
        scores.update(fidelity_scores(gen.images, self.base_images, self.lpips, self.params.metrics.batch_size))
        q.update({k: float(v.mean()) for k, v in scores.items() if k not in q})  # preference and fidelity means
        if items_out is not None:
            save_item_scores(items_out, feats, scores)
            q.update(item_readings(feats, scores, load_item_scores(self.reference_dir / ITEMS_FILE),
                                   len(self.embeds.prompts), self.params.evaluate,
                                   derive_seed(self.params.seed, "bootstrap")))
        return q, gen.images, gen.prompts

    def speed_of(self, model) -> tuple[dict, dict]:
        """FLOPs (deterministic) and latency (not) of ``model`` against the base, both stamped with a
        digest of the weights timed: a timing file that DVC did not rewrite (the stage was restored
        from its run-cache) then shows it belongs to another model (``fastflux_core.report``)."""
        cfg = self.params.evaluate
        digest = tensors_digest(model.state_dict())[:16]
        flops, lat = speed_against(self.base, model, self.x, self.on_device, cfg.latency_warmup, cfg.latency_repeats)
        return {**flops, "model": digest}, {**lat, "model": digest}


def evaluate(params: Params, embeds: PromptEmbeds, reference: Path, pruned_dir: Path, out: Path,
             world: World = World()) -> tuple[dict, dict] | None:
    """Stage ``evaluate``: the exported model at ``params.ratio`` against the base. Writes the grid to
    ``out``; returns (deterministic metrics, latency record) — on the main rank; every rank generates
    its share of the images, the others return ``None``."""
    ev = Evaluator(params, embeds, reference, world)
    pruned = load_pruned(pruned_dir)  # host
    scored = ev.quality_of(pruned, items_out=out / ITEMS_FILE)
    if scored is None:
        return None
    q, images, prompts = scored
    flops, lat = ev.speed_of(pruned)
    rows = min(params.evaluate.grid_rows, len(prompts))
    comparison_grid({"base": ev.base_images, "pruned": images}, prompts, rows).save(out / "grid.png")
    metrics = {"ratio": params.ratio, "n_pruned": len(pruned.config.replaced_blocks) + len(pruned.config.deleted_blocks),
               "n_blocks": len(adapter_for(pruned).blocks), **q, **flops,
               "clip_kind": ev.quality.alignment.name, "base_clip": ev.reference["clip"], "eval_images": len(images)}
    for key in ("fid_real", "prompt_accuracy", "hps", "imagereward"):
        if key in ev.reference:
            metrics[f"base_{key}"] = ev.reference[key]
    if "hps" in q:
        metrics["hps_version"] = params.metrics.hps_version
    return metrics, {"ratio": params.ratio, **lat}
