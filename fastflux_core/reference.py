"""The full model's images of a prompt set, and what they score (stage ``reference@<set>``); and the
generation and scoring every later stage shares.

Ablations (the importance set, :mod:`fastflux_core.ablation`) and pruned models (the evaluation set,
:mod:`fastflux_core.evaluation`) are generated with the same prompts, seeds and sampling settings as the
reference, by :func:`generate_with` (every rank its share of whole sampling batches, so every image is
the one-process image), and scored against the reference's feature statistics
(:func:`score_images`, :func:`load_reference_stats`); per-image features and scores go to
``items.safetensors`` (:data:`ITEMS_FILE`) for the report's intervals over evaluation items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastflux_core.errors import FastFluxError
from fastflux_core.families import adapter_for
from fastflux_core.io import image_grid, load_tensors, save_png, save_tensors
from fastflux_core.metrics import (FeatureStats, Quality, extra_scores, fid, folder_features, image_features, item_scores,
                                   preference_scorers, load_quality, real_features)
from fastflux_core.params import Params, SamplingParams, importance_sampling
from fastflux_core.placement import resolve_device
from fastflux_core.prompts import GenItem, PromptEmbeds, prompt_items
from fastflux_core.sampling import sample_latents
from fastflux_core.source import load_codec, load_scheduler, load_transformer, on_device
from fastflux_core.stage import World


@dataclass
class Generated:
    latents: torch.Tensor  # (N, C, h, w) final latents
    images: np.ndarray  # (N, H, W[, 3]) uint8
    prompts: list[str]  # prompt of each image


def generate_with(model, scheduler, codec, embeds: PromptEmbeds, items: list[GenItem], sampling,
                  world: World = World(), tag: str = "generated") -> Generated | None:
    """Generate ``items`` with a given model: final latents, decoded images, and each image's prompt.

    With several ranks each generates its share, in whole sampling batches — the batches a single
    process runs, so every image is the one-process image — and the main rank gets them all in item
    order; the others get ``None``. ``tag`` names this exchange (unique within a stage)."""
    mine = world.share(items, sampling.batch_size)
    part = {}
    if mine:
        latents = sample_latents(model, scheduler, embeds, mine, sampling, codec.latent_channels, codec.scale_factor)
        part = {"latents": latents, "images": torch.from_numpy(codec.decode(latents))}
    got = world.gather(part, tag)
    if got is None:
        return None
    return Generated(got["latents"], got["images"].numpy(), [embeds.prompts[it.prompt] for it in items])


def generate(params: Params, embeds: PromptEmbeds, items: list[GenItem], sampling: SamplingParams,
             skip: int | None = None, world: World = World()) -> Generated | None:
    """Generate ``items`` with the base model at ``sampling``'s settings, block ``skip`` removed if
    given (with several ranks: each its share, the main rank gets all; see :func:`generate_with`)."""
    model = load_transformer(params.model)
    if skip is not None:
        adapter = adapter_for(model)
        if not 0 <= skip < len(adapter.blocks):
            raise FastFluxError(f"block {skip} does not exist: the model has {len(adapter.blocks)} blocks")
        adapter.skip(skip)
    on_device(model, params, "reference" if skip is None else f"ablate@{skip}")
    return generate_with(model, load_scheduler(params.model), load_codec(params.model, model), embeds, items, sampling, world)


def score_images(images: np.ndarray, prompts: list[str], quality: Quality, ref_model: FeatureStats,
                 ref_real: FeatureStats | None, device: torch.device, batch_size: int,
                 feats: np.ndarray | None = None) -> dict[str, float]:
    """FID against the full model's images (and real images) and the alignment score (keyed by its
    name); ``feats``: the images' features when already computed."""
    if feats is None:
        feats = image_features(images, quality.features, device, batch_size)
    out = {"fid": fid(feats, ref_model), quality.alignment.name: quality.alignment.score(images, prompts),
           **extra_scores(quality, images, prompts)}
    if ref_real is not None:
        out["fid_real"] = fid(feats, ref_real)
    return out


def make_reference(params: Params, set_name: str, embeds: PromptEmbeds, out: Path, world: World = World()) -> dict | None:
    """Stage ``reference@<set>``: the full model's images for a prompt set (PNGs, final latents) and
    feature statistics of those and of real images. Ablations (importance set) and pruned models
    (evaluation set) are scored against these, with the same prompts and seeds — and the same
    sampling settings (the importance set's own: :func:`~fastflux_core.params.importance_sampling`).
    Every rank generates its share; the main rank writes and scores (the others return ``None``)."""
    device = resolve_device(params.model.device)
    # the preference workers are tried before any image is made
    preference = preference_scorers(params.metrics) if set_name == "evaluation" and world.is_main else ()
    s = getattr(params.prompts, set_name)
    sampling = importance_sampling(params) if set_name == "importance" else params.sampling
    gen = generate(params, embeds, prompt_items(len(embeds.prompts), s.images_per_prompt, s.seed), sampling, world=world)
    if gen is None:
        return None
    (out / "images").mkdir()
    for i, img in enumerate(gen.images):
        save_png(out / "images" / f"{i:05d}.png", img)
    save_png(out / "grid.png", image_grid(gen.images[: 4 * len(embeds.prompts)], cols=len(embeds.prompts),
                                          scale=max(1, 64 // gen.images.shape[1])))
    save_tensors(out / "latents.safetensors", {"latents": gen.latents})
    quality = load_quality(params.metrics, device, preference)
    feats = folder_features(out / "images", quality.features, device, params.metrics.batch_size)
    FeatureStats.of(feats).save(out / "stats_model.safetensors")
    items = item_scores(quality, gen.images, gen.prompts)
    save_item_scores(out / ITEMS_FILE, feats, items)
    record = {"set": set_name, "images": len(gen.images), "steps": sampling.steps, "size": [sampling.height, sampling.width],
              "clip_kind": quality.alignment.name,
              "clip": quality.alignment.score(gen.images, gen.prompts),
              **extra_scores(quality, gen.images, gen.prompts),
              **{s.name: float(items[s.name].mean()) for s in preference}}
    real = real_features(params.metrics.real_images, quality.features, device, params.metrics.batch_size)
    if real is not None:
        stats = FeatureStats.of(real)
        stats.save(out / "stats_real.safetensors")
        record["fid_real"] = fid(feats, stats)
        record["real_images"] = len(real)
    return record


ITEMS_FILE = "items.safetensors"  # per-image features and scores, in item order (stats.py's intervals)


def save_item_scores(path: Path, feats: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    """Per-image FID features (N, F) and scores (N,) of a set of images, in item order."""
    save_tensors(path, {"features": torch.from_numpy(np.asarray(feats)),
                        **{k: torch.from_numpy(np.asarray(v)) for k, v in scores.items()}})


def load_item_scores(path: Path) -> dict[str, np.ndarray]:
    return {k: t.numpy() for k, t in load_tensors(path).items()}


def load_reference_images(reference: Path) -> np.ndarray:
    """The reference's images in item order, (N, H, W[, 3]) uint8 (PNG is lossless)."""
    files = sorted((reference / "images").glob("*.png"))
    if not files:
        raise FastFluxError(f"no reference images in {reference / 'images'}: run the reference stage")
    return np.stack([np.asarray(Image.open(f)) for f in files])


def load_reference_stats(reference: Path) -> tuple[FeatureStats, FeatureStats | None]:
    """(statistics of the full model's images, of the real images or None)."""
    real = reference / "stats_real.safetensors"
    return FeatureStats.load(reference / "stats_model.safetensors"), FeatureStats.load(real) if real.is_file() else None
