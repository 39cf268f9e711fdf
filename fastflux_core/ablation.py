"""Block ablation (paper Algorithm 1, first loop): remove one block, generate, measure.

Removing B_i means its output := its input (:class:`~fastflux_core.pruned_flux.SkipBlock`). Every
ablation generates the importance prompt set with the reference's seeds, so the images differ only
by the missing block. Each ablation records

  fid, fid_real     FID against the full model's images (stage ``reference``) and real images
  clip_score | judge_alignment   the CLIP-style text–image alignment (see metrics.py)
  proxy_mse, proxy_cos           cheap proxy: final-latent error against the full model's latents

:mod:`fastflux_core.importance` turns these records into the ranking (Eq. 2).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastflux_core.io import image_grid, load_tensors, save_png
from fastflux_core.metrics import load_quality
from fastflux_core.params import Params, importance_sampling
from fastflux_core.placement import resolve_device
from fastflux_core.prompts import GenItem, PromptEmbeds, prompt_items
from fastflux_core.reference import generate, load_reference_stats, score_images
from fastflux_core.stage import World


def importance_items(params: Params, n_prompts: int, proxy_only: bool) -> list[GenItem]:
    """The importance set's items; the proxy method uses only the first rounds (same seeds)."""
    s = params.prompts.importance
    per_prompt = min(params.importance.proxy_images_per_prompt, s.images_per_prompt) if proxy_only else s.images_per_prompt
    return prompt_items(n_prompts, per_prompt, s.seed)


def latent_error(latents: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Proxy: MSE and mean per-image cosine similarity of final latents against the reference's."""
    a, b = latents.flatten(1).double(), reference.flatten(1).double()
    return {
        "proxy_mse": float(((a - b) ** 2).mean()),
        "proxy_cos": float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean()),
    }


def ablate_block(params: Params, index: int, embeds: PromptEmbeds, reference: Path, out: Path,
                 world: World = World()) -> dict | None:
    """Stage ``ablate@index``: skip block ``index``, generate, score. Returns the block's record (on
    the main rank; every rank generates its share, the others return ``None``)."""
    device = resolve_device(params.model.device)
    proxy_only = params.importance.method == "proxy"
    items = importance_items(params, len(embeds.prompts), proxy_only)
    gen = generate(params, embeds, items, importance_sampling(params), skip=index, world=world)
    if gen is None:
        return None
    ref_latents = load_tensors(reference / "latents.safetensors")["latents"][: len(items)]
    record: dict = {"block": index, "images": len(items), **latent_error(gen.latents, ref_latents)}
    if not proxy_only:
        ref_model, ref_real = load_reference_stats(reference)
        record.update(score_images(gen.images, gen.prompts, load_quality(params.metrics, device), ref_model, ref_real, device,
                                   params.metrics.batch_size))
    n = len(embeds.prompts)
    save_png(out / "grid.png", image_grid(gen.images[: 2 * n], cols=n, scale=max(1, 64 // gen.images.shape[1])))
    return record
