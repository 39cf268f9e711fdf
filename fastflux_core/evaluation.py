"""Evaluate a pruned model against its base on held-out prompts: quality, speed, FLOPs, a picture.

Quality: FID of the pruned model's images against the base model's (same prompts, same seeds) and
against real images, and the CLIP-style alignment of both (see metrics.py). Speed: one transformer
forward at the sampling resolution, batch 1, base and pruned timed alternately in the same run,
median of ``evaluate.latency_repeats`` after ``evaluate.latency_warmup`` warm-ups. FLOPs: one forward
under ``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

from fastflux_core.adapter import ModelInputs
from fastflux_core.codec import LatentCodec, latent_ids
from fastflux_core.metrics import FeatureStats, Quality, fid, image_features
from fastflux_core.params import Params
from fastflux_core.prompts import PromptEmbeds, prompt_items
from fastflux_core.sampling import latent_size, sample_latents


def forward_inputs(params: Params, model, codec: LatentCodec, embeds: PromptEmbeds) -> ModelInputs:
    """Inputs of one denoising call at the sampling resolution, batch 1, mid-schedule."""
    p = next(model.parameters())
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    n_img = (h // 2) * (w // 2)
    g = torch.Generator().manual_seed(0)
    guidance = torch.full((1,), params.sampling.guidance_scale, device=p.device) if model.config.guidance_embeds else None
    return ModelInputs(
        hidden_states=torch.randn(1, n_img, 4 * codec.latent_channels, generator=g).to(p.device, p.dtype),
        encoder_hidden_states=embeds.prompt_embeds[:1].to(p.device, p.dtype),
        pooled_projections=embeds.pooled[:1].to(p.device, p.dtype),
        timestep=torch.full((1,), 0.5, device=p.device, dtype=p.dtype),
        img_ids=latent_ids(h, w, p.device, p.dtype),
        txt_ids=torch.zeros(embeds.prompt_embeds.shape[1], 3, device=p.device, dtype=p.dtype),
        guidance=guidance,
    )


def _call(model, x: ModelInputs) -> torch.Tensor:
    return model(hidden_states=x.hidden_states, encoder_hidden_states=x.encoder_hidden_states,
                 pooled_projections=x.pooled_projections, timestep=x.timestep, img_ids=x.img_ids,
                 txt_ids=x.txt_ids, guidance=x.guidance, return_dict=False)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency(models: dict[str, torch.nn.Module], x: ModelInputs, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of one forward per model; models are timed alternately so drift hits all alike."""
    device = x.hidden_states.device
    for _ in range(warmup):
        for m in models.values():
            _call(m, x)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            _sync(device)
            t0 = time.perf_counter()
            _call(m, x)
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def flops(model: torch.nn.Module, x: ModelInputs) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        _call(model, x)
    return counter.get_total_flops()


def generate_images(params: Params, model, scheduler, codec: LatentCodec, embeds: PromptEmbeds) -> tuple[np.ndarray, list[str]]:
    s = params.prompts.evaluation
    items = prompt_items(len(embeds.prompts), s.images_per_prompt, s.seed)
    latents = sample_latents(model, scheduler, embeds, items, params.sampling, codec.latent_channels, codec.scale_factor)
    return codec.decode(latents), [embeds.prompts[it.prompt] for it in items]


def quality_against(images: np.ndarray, prompts: list[str], quality: Quality, ref_model: FeatureStats,
                    ref_real: FeatureStats | None, device: torch.device, batch_size: int) -> dict[str, float]:
    feats = image_features(images, quality.features, device, batch_size)
    out = {"fid": fid(feats, ref_model), "clip": quality.alignment.score(images, prompts)}
    if ref_real is not None:
        out["fid_real"] = fid(feats, ref_real)
    return out


def comparison_grid(base: np.ndarray, pruned: np.ndarray, prompts: list[str], rows: int, cell: int = 64) -> Image.Image:
    """Rows of ``prompt | base | pruned`` for the first ``rows`` images (same prompt and seed)."""
    label_w = 8 + 7 * max(len(p) for p in prompts[:rows])
    img = Image.new("RGB", (label_w + 2 * cell + 12, 20 + rows * (cell + 4)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((label_w, 4), "base", fill="black")
    draw.text((label_w + cell + 8, 4), "pruned", fill="black")
    for r in range(min(rows, len(prompts))):
        y = 20 + r * (cell + 4)
        draw.text((4, y + cell // 2 - 6), prompts[r], fill="black")
        for c, arr in enumerate((base[r], pruned[r])):
            tile = Image.fromarray(arr).convert("RGB").resize((cell, cell), Image.NEAREST)
            img.paste(tile, (label_w + c * (cell + 8), y))
    return img


def evaluate(params: Params, states: list, pruned_dir, out) -> tuple[dict, list[dict]]:
    """Stage ``evaluate``: the exported model at ``params.ratio`` against the base (metrics, grid), and,
    with ``evaluate.sweep``, every chain length 0..K for the quality/latency-vs-ratio plot."""
    from fastflux_core.assemble import load_pruned, pruned_model
    from fastflux_core.metrics import load_quality, real_features
    from fastflux_core.source import load_codec, load_scheduler, load_transformer, resolve_device

    cfg, device = params.evaluate, resolve_device(params.model.device)
    embeds = PromptEmbeds.load("data/encoded/evaluation.safetensors")
    base = load_transformer(params)
    codec, scheduler = load_codec(params, base), load_scheduler(params)
    quality = load_quality(params, device)
    bs = params.metrics.batch_size
    base_imgs, prompts = generate_images(params, base, scheduler, codec, embeds)
    base_feats = image_features(base_imgs, quality.features, device, bs)
    ref_model = FeatureStats.of(base_feats)
    real = real_features(params.metrics.real_images, quality.features, device, bs)
    ref_real = FeatureStats.of(real) if real is not None else None
    x = forward_inputs(params, base, codec, embeds)
    base_flops = flops(base, x)

    def measure(model) -> dict:
        imgs, _ = generate_images(params, model, scheduler, codec, embeds)
        q = quality_against(imgs, prompts, quality, ref_model, ref_real, device, bs)
        lat = latency({"base": base, "pruned": model}, x, cfg.latency_warmup, cfg.latency_repeats)
        q.update(latency_ms_base=1e3 * lat["base"], latency_ms=1e3 * lat["pruned"],
                 latency_ratio=lat["pruned"] / lat["base"], flops=flops(model, x), flops_base=base_flops)
        q["flops_ratio"] = q["flops"] / base_flops
        return {**q, "_images": imgs}

    pruned = load_pruned(pruned_dir).to(device)
    m = measure(pruned)
    comparison_grid(base_imgs, m.pop("_images"), prompts, rows=min(cfg.grid_rows, len(prompts))).save(out / "grid.png")
    n = len(pruned.config.replaced_blocks)
    metrics = {"ratio": params.ratio, "n_pruned": n, **m, "clip_kind": quality.alignment.name,
               "base_clip": quality.alignment.score(base_imgs, prompts), "eval_images": len(base_imgs)}
    if ref_real is not None:
        metrics["base_fid_real"] = fid(base_feats, ref_real)
    rows = []
    if cfg.sweep:
        n_blocks = len(pruned.transformer_blocks) + len(pruned.single_transformer_blocks)
        for k in range(len(states)):
            r = measure(pruned_model(params, states, k)[0].model)
            r.pop("_images")
            rows.append({"n_pruned": k, "ratio": k / n_blocks, **{key: r[key] for key in
                         ("fid", "fid_real", "clip", "latency_ratio", "flops_ratio") if key in r}})
    return metrics, rows
