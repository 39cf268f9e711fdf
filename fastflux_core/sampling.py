"""Seeded flow-matching sampling with diffusers' ``FlowMatchEulerDiscreteScheduler``.

The loop is the family pipeline's (``FluxPipeline.__call__``: its sigma schedule and resolution shift
``mu``, ``timestep / 1000``, distilled guidance; ``StableDiffusion3Pipeline``: its schedule — the
adapter's ``timesteps`` and ``call`` hold what differs) but takes a list of :class:`GenItem`
(prompt index, seed) instead of prompts: each item's starting noise comes from its own seeded
generator on the CPU, so an image does not depend on which batch or which process made it (beyond
float tolerance). That is what lets later stages shard generation across GPUs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from tqdm.auto import tqdm

from fastflux_core.blocks import ModelInputs
from fastflux_core.codec import latent_ids, pack, unpack
from fastflux_core.errors import FastFluxError
from fastflux_core.families import adapter_for
from fastflux_core.params import SamplingParams
from fastflux_core.prompts import GenItem, PromptEmbeds


def latent_size(height: int, width: int, scale_factor: int) -> tuple[int, int]:
    """Latent cells (h, w) for an image (even, for 2×2 packing). ``FluxPipeline`` silently rounds a
    size that does not pack down; here it is an error (params validation says so first).

    >>> latent_size(1024, 768, 8)
    (128, 96)
    """
    multiple = 2 * scale_factor
    if height % multiple or width % multiple:
        raise FastFluxError(f"image size {height}×{width} is not a multiple of {multiple} (2×2 packing of "
                            f"{scale_factor}-pixel latent cells): set sampling.height/width to multiples of {multiple}")
    return height // scale_factor, width // scale_factor


def initial_noise(items: list[GenItem], channels: int, h: int, w: int) -> torch.Tensor:
    """(N, C, h, w) float32 standard normal noise; row i depends only on ``items[i].seed``."""
    out = torch.empty(len(items), channels, h, w)
    for i, item in enumerate(items):
        out[i] = torch.randn(channels, h, w, generator=torch.Generator("cpu").manual_seed(item.seed))
    return out


def timesteps_for(transformer: torch.nn.Module, scheduler: FlowMatchEulerDiscreteScheduler, steps: int,
             image_seq_len: int, device: torch.device) -> torch.Tensor:
    """The timesteps (sigma · 1000) the model's pipeline runs for ``steps`` steps at ``image_seq_len`` tokens."""
    return adapter_for(transformer).timesteps(scheduler, steps, image_seq_len, device)


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, renorm: bool) -> torch.Tensor:
    """Classifier-free guidance as the family's pipeline combines the two calls: v_u + s·(v_c − v_u)
    (``StableDiffusion3Pipeline``, ``FluxPipeline``'s and ``Flux2KleinPipeline``'s); ``renorm``
    (``QwenImagePipeline``) then rescales each token to the conditional velocity's norm. (b, N, C).

    >>> c, u = torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[0.0, 0.0]]])
    >>> guided(c, u, 2.0, renorm=False).tolist(), guided(c, u, 2.0, renorm=True).tolist()
    ([[[6.0, 8.0]]], [[[3.0, 4.0]]])
    """
    combined = v_uncond + scale * (v_cond - v_uncond)
    if renorm:
        combined = combined * (torch.norm(v_cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))
    return combined


def velocity(transformer: torch.nn.Module, latents: torch.Tensor, sigma: torch.Tensor,
             guidance: torch.Tensor | None, pooled: torch.Tensor, prompt_embeds: torch.Tensor,
             txt_ids: torch.Tensor, img_ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """One denoising call, as the model's pipeline makes it: (b, N_img, C_tok) packed latents at
    ``sigma`` (b,) (the FLUX pipeline's t / 1000) on a grid of ``grid`` latent cells → predicted
    velocity, same shape. The device work of every sampling stage; :mod:`fastflux_core.stage_peaks` measures its peak."""
    x = ModelInputs(latents, prompt_embeds, pooled, sigma, img_ids, txt_ids, guidance, grid)
    return adapter_for(transformer).call(x)


@torch.no_grad()
def sample_latents(
    transformer: torch.nn.Module,
    scheduler: FlowMatchEulerDiscreteScheduler,
    embeds: PromptEmbeds,
    items: list[GenItem],
    sampling: SamplingParams,
    latent_channels: int,
    scale_factor: int,
    progress: bool = True,
    on_step: Callable[[int, slice, ModelInputs, bool], None] | None = None,
) -> torch.Tensor:
    """Denoise every item; return final latents (N, C, h, w), float32 on CPU, in item order.

    ``on_step(i, batch, inputs, negative)`` runs before the transformer call of schedule step ``i``
    on ``items[batch]`` with its inputs: activation capture arms its hooks at chosen timesteps and
    records the inputs there. With classifier-free guidance (``sampling.true_cfg_scale`` > 1) each
    step calls the model twice, with the prompts and then with the negative prompt (``negative``
    True), and combines the two as the family's pipeline does (:func:`guided`) — two calls of b
    rather than one of 2b, so capture sees each as a batch of its own (the same FLOPs)."""
    p = next(transformer.parameters())
    device, dtype = p.device, p.dtype
    h, w = latent_size(sampling.height, sampling.width, scale_factor)
    img_ids = latent_ids(h, w, device, dtype)  # (h/2 · w/2, 3)
    txt_ids = torch.zeros(embeds.prompt_embeds.shape[1], 3, device=device, dtype=dtype)  # (T, 3)
    adapter = adapter_for(transformer)  # the family's guidance embedding and CFG combination, looked up once
    out = []
    batches = range(0, len(items), sampling.batch_size)
    bar = tqdm(total=len(items) * sampling.steps, desc="sample", unit="step", disable=not progress)
    for start in batches:
        chunk = items[start : start + sampling.batch_size]
        b = len(chunk)
        latents = pack(initial_noise(chunk, latent_channels, h, w)).to(device, dtype)  # (b, N_img, 4C)
        prompt_embeds, pooled = embeds.select([it.prompt for it in chunk])
        prompt_embeds, pooled = prompt_embeds.to(device, dtype), pooled.to(device, dtype)
        if sampling.cfg:  # (b, T, D_text), (b, D_pool): the negative prompt's states for every item
            neg_embeds, neg_pooled = (t.to(device, dtype) for t in embeds.select([it.prompt for it in chunk], True))
        guidance = None
        if adapter.uses_guidance:
            guidance = torch.full((b,), sampling.guidance_scale, device=device, dtype=torch.float32)
        sched = copy.deepcopy(scheduler)  # step index is per-run state
        for i, t in enumerate(timesteps_for(transformer, sched, sampling.steps, latents.shape[1], device)):
            x = ModelInputs(latents, prompt_embeds, pooled, t.expand(b).to(dtype) / 1000, img_ids, txt_ids, guidance, (h, w))
            if on_step is not None:
                on_step(i, slice(start, start + b), x, False)
            v = velocity(transformer, x.hidden_states, x.timestep, x.guidance, x.pooled_projections,
                         x.encoder_hidden_states, x.txt_ids, x.img_ids, x.grid)
            if sampling.cfg:
                xu = replace(x, encoder_hidden_states=neg_embeds, pooled_projections=neg_pooled)
                if on_step is not None:
                    on_step(i, slice(start, start + b), xu, True)
                v_u = velocity(transformer, xu.hidden_states, xu.timestep, xu.guidance, xu.pooled_projections,
                               xu.encoder_hidden_states, xu.txt_ids, xu.img_ids, xu.grid)
                v = guided(v, v_u, sampling.true_cfg_scale, adapter.cfg_renorm)
            latents = sched.step(v, t, latents, return_dict=False)[0]
            bar.update(b)
        out.append(unpack(latents.float().cpu(), h, w))
    bar.close()
    return torch.cat(out)
