"""The embedded default base: a small diffusion transformer trained with rectified flow on digits.

It is an ordinary diffusers model of the family ``embedded.family`` names — ``FluxTransformer2DModel``
(FLUX's block types, FLUX's 1:2 double:single proportion, 4 + 8 blocks by default),
``Flux2Transformer2DModel`` (2 + 10), ``SD3Transformer2DModel`` (12 joint blocks by default, the last
without text output) or ``QwenImageTransformer2DModel`` (12 double blocks) — with text through
``encoder_hidden_states`` (and ``pooled_projections`` where the family reads it), only small, so every pruning stage can
run for real on a CPU. Nothing downstream knows it is small; the family's adapter builds it.

Training is rectified flow as FLUX uses it (diffusers' convention): x_σ = (1 − σ)·x + σ·ε and the
model predicts the velocity ε − x, with σ drawn logit-normally (SD3's recipe).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from tqdm.auto import trange

from fastflux_core import digits
from fastflux_core.codec import PixelCodec, latent_ids, pack
from fastflux_core.errors import require_finite
from fastflux_core.families import adapter_for, family
from fastflux_core.io import image_grid, save_png, save_tensors
from fastflux_core.layouts import embedded_transformer_config
from fastflux_core.params import EmbeddedParams
from fastflux_core.placement import resolve_device
from fastflux_core.prompts import PromptEmbeds, derive_seed, prompt_items
from fastflux_core.sampling import sample_latents, velocity
from fastflux_core.text import check_cut, encode_prompts, load_text_encoder

if TYPE_CHECKING:
    from fastflux_core.params import Params


def build_model(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> torch.nn.Module:
    """A fresh transformer of ``embedded.family`` for ``latent_channels``-channel latents."""
    config = embedded_transformer_config(cfg, latent_channels, text_dims)
    return family(cfg.family).model_class(**{k: v for k, v in config.items() if not k.startswith("_")})


def build_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Plain rectified-flow Euler schedule (no resolution shift: 16 tokens are far below FLUX's 256)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def train_base(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    captions: PromptEmbeds,
    caption_labels: torch.Tensor,
    cfg: EmbeddedParams,
    seed: int,
) -> list[float]:
    """Train ``model`` in place on (images (N, C, H, W) in [-1, 1], labels). Each step pairs every
    image with a random caption of its class. Returns the loss per step."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(caption_labels == c).flatten() for c in range(int(caption_labels.max()) + 1)]
    _, c, h, w = images.shape
    img_ids = latent_ids(h, w)
    txt_ids = torch.zeros(captions.prompt_embeds.shape[1], 3)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    warmup = max(1, cfg.train_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.train_steps) / cfg.train_steps))
    )
    model.train()
    losses = []
    bar = trange(cfg.train_steps, desc="base", unit="step")
    for _ in bar:
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        x = images[idx]  # (B, C, H, W)
        cap = torch.stack([by_class[int(y)][torch.randint(len(by_class[int(y)]), (1,), generator=g)][0] for y in labels[idx]])
        prompt_embeds, pooled = captions.select(cap)
        sigma = torch.sigmoid(torch.randn(cfg.batch_size, generator=g))  # (B,) logit-normal
        noise = torch.randn(x.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1)
        x_sigma = (1 - s) * x + s * noise
        target = pack(noise - x)  # (B, N_img, 4C) velocity
        pred = velocity(model, pack(x_sigma), sigma, None, pooled, prompt_embeds, txt_ids, img_ids)
        loss = require_finite(torch.nn.functional.mse_loss(pred, target),
                              f"base training loss at step {len(losses)} (lower embedded.learning_rate)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    model.eval()
    return losses


def make_embedded_base(params: "Params", out: Path) -> dict:
    """Stage ``base`` for the embedded default: train the judge and the base, save both under
    ``out`` (``transformer/``, ``scheduler/``, ``judge.safetensors``, ``samples.png``) and measure
    how often samples show the prompted digit — on the base's own captions, one per digit ("a
    handwritten digit <name>"), not on a prompt set: the base depends on no prompt file, so editing
    one never re-trains it (and re-runs everything after it). Returns the metrics."""
    cfg = params.embedded
    images, labels = digits.load_digits()
    judge, judge_acc = digits.train_judge(images, labels, cfg.judge_steps, cfg.seed)
    save_tensors(out / "judge.safetensors", judge.state_dict())

    encoder = load_text_encoder(params.model, params.text)
    caption_prompts, caption_labels = digits.captions()
    check_cut(encoder, caption_prompts, "the base's captions (digits.TRAIN_TEMPLATES)", digits=True)
    caps = encode_prompts(encoder, caption_prompts, params.text.batch_size, desc="captions",
                          negative_prompt=params.sampling.negative)  # the check samples as stages do
    del encoder  # no text encoder in memory while training or generating

    model = build_model(cfg, latent_channels=images.shape[1], text_dims=(caps.prompt_embeds.shape[-1], caps.pooled.shape[-1]))
    losses = train_base(model, images, labels, caps, caption_labels, cfg, cfg.seed)
    scheduler = build_scheduler()
    model.save_pretrained(out / "transformer", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")

    model.to(resolve_device(params.model.device))
    first = [i for i, _ in enumerate(caption_prompts) if i % len(digits.TRAIN_TEMPLATES) == 0]  # one per digit
    check = PromptEmbeds([caption_prompts[i] for i in first], *caps.select(first), caps.negative)
    items = prompt_items(len(first), cfg.eval_images_per_prompt, derive_seed(cfg.seed, "base-samples"))
    latents = sample_latents(model, scheduler, check, items, params.sampling, images.shape[1], 1)
    generated = PixelCodec(images.shape[1]).decode(latents)  # (N, 8, 8) uint8
    acc = digits.prompt_accuracy(judge, generated, [check.prompts[it.prompt] for it in items])
    n = len(check.prompts)
    save_png(out / "samples.png", image_grid(generated[: n * min(4, cfg.eval_images_per_prompt)], cols=n, scale=4))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "family": cfg.family,
        "blocks": len(adapter_for(model).blocks),
        "train_steps": cfg.train_steps,
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 5),
        "judge_test_accuracy": round(judge_acc, 4),
        "prompt_accuracy": round(acc, 4),
        "eval_images": len(items),
    }
