"""Activation capture for pruning step k (paper §3.1 and Algorithm 1: "collect the input and output").

The model as it stands after steps < k (earlier linears and LoRA loaded) generates the calibration
prompt set; at the schedule steps in ``capture.timesteps`` forward hooks record, per sample:

  block_in_{img,txt} / residual_{img,txt}   (rows, D)   block i's input and residual output
        (output − input), ``image_tokens`` / ``text_tokens`` random tokens per sample — the
        least-squares data of Eq. 1. A single block's replacement is one linear for both streams;
        the solve concatenates the two.
  sandwich_in_{img,txt}                      (sample, N, D)  state entering the sandwich's first block
  sandwich_out_{img,txt}                     (sample, N, D)  state leaving its last block
  temb (sample, D), timestep (sample,), item (sample,), schedule_step (sample,)
  img_ids (N_img, 3), txt_ids (N_txt, 3)     rotary position ids (static)

Sandwich states keep every token: the sandwich contains attention, so it must be re-run on whole
sequences. Everything needed to re-run blocks u..d is in the store (temb, ids → rotary embedding).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from fastflux_core.adapter import BlockState, adapter_for
from fastflux_core.chain import ChainState, PlanStep, build_chain_model
from fastflux_core.codec import latent_ids
from fastflux_core.errors import FastFluxError
from fastflux_core.params import Params
from fastflux_core.prompts import PromptEmbeds, prompt_items
from fastflux_core.sampling import flux_timesteps, latent_size, sample_latents
from fastflux_core.source import load_codec, load_scheduler, load_transformer
from fastflux_core.store import ArraySpec, StoreWriter


class NonFiniteActivations(FastFluxError):
    """NaN or inf in captured activations."""


def _check_finite(t: torch.Tensor, what: str, block: str, step: int) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise NonFiniteActivations(
            f"{bad} non-finite values (NaN/inf) in {what} of block {block} at schedule step {step}; "
            f"try model.dtype: float32 or bfloat16 (float16 overflows in FLUX)"
        )


def capture_specs(dim: int, n_img: int, n_txt: int, k_img: int, k_txt: int, original: bool) -> list[ArraySpec]:
    extra = [ArraySpec("original_out_img", (n_img, dim), ("sample", "image_seq", "dim")),
             ArraySpec("original_out_txt", (n_txt, dim), ("sample", "text_seq", "dim"))] if original else []
    a = extra + [
        ArraySpec("block_in_img", (dim,), ("token", "dim"), k_img),
        ArraySpec("residual_img", (dim,), ("token", "dim"), k_img),
        ArraySpec("block_in_txt", (dim,), ("text_token", "dim"), k_txt),
        ArraySpec("residual_txt", (dim,), ("text_token", "dim"), k_txt),
        ArraySpec("sandwich_in_img", (n_img, dim), ("sample", "image_seq", "dim")),
        ArraySpec("sandwich_in_txt", (n_txt, dim), ("sample", "text_seq", "dim")),
        ArraySpec("sandwich_out_img", (n_img, dim), ("sample", "image_seq", "dim")),
        ArraySpec("sandwich_out_txt", (n_txt, dim), ("sample", "text_seq", "dim")),
        ArraySpec("temb", (dim,), ("sample", "dim")),
    ]
    return a + [
        ArraySpec("timestep", (), ("sample",), activation=False),
        ArraySpec("item", (), ("sample",), activation=False, dtype="int64"),
        ArraySpec("schedule_step", (), ("sample",), activation=False, dtype="int64"),
    ]


def capture_step(params: Params, step: PlanStep, state: ChainState, embeds: PromptEmbeds,
                 block_name: str, out: Path) -> dict:
    """Run the calibration set through the chain model and write ``out`` (a Zarr store)."""
    t0 = time.perf_counter()
    adapter = build_chain_model(params, state)
    model = adapter.model.eval()
    i, (u, d) = step.block, step.sandwich
    cal = params.prompts.calibration
    items = prompt_items(len(embeds.prompts), cal.images_per_prompt, cal.seed)
    cap = params.capture
    steps_armed = set(cap.timesteps)
    codec = load_codec(params, model)
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    n_img, n_txt, dim = (h // 2) * (w // 2), embeds.prompt_embeds.shape[1], model.inner_dim
    k_img, k_txt = min(cap.image_tokens, n_img), min(cap.text_tokens, n_txt)
    n_samples = len(items) * len(cap.timesteps)
    original = params.sandwich.target == "original"
    base = adapter_for(load_transformer(params)) if original else None  # the unpruned blocks u..d
    writer = StoreWriter(
        out, capture_specs(dim, n_img, n_txt, k_img, k_txt, original), n_samples, cap.shard_samples, cap.chunk_samples,
        cap.dtype, cap.clevel,
        attrs={"step": step.k, "block": i, "block_name": block_name, "kind": adapter.blocks[i].kind,
               "sandwich": [u, d], "replaced_before": list(step.replaced_before),
               "lora_blocks": step.lora_blocks(), "linear_blocks": step.linear_blocks(),
               "timesteps": cap.timesteps, "image_tokens": k_img, "text_tokens": k_txt,
               "model_dtype": params.model.dtype, "description": __doc__.split("\n\n")[0]},
    )
    writer.write_static("img_ids", latent_ids(h, w), ("image_seq", "xyz"))
    writer.write_static("txt_ids", torch.zeros(n_txt, 3), ("text_seq", "xyz"))

    sched = load_scheduler(params)
    sigmas = (flux_timesteps(copy.deepcopy(sched), params.sampling.steps, n_img, torch.device("cpu")) / 1000).tolist()
    ctx: dict = {"armed": False, "step": -1, "batch": slice(0, 0)}
    gen = torch.Generator().manual_seed(params.seed + 7919 * step.k)  # token sub-sampling

    def on_step(s: int, batch: slice) -> None:
        ctx.update(armed=s in steps_armed, step=s, batch=batch)

    def pick(n: int, k: int, b: int) -> torch.Tensor:  # (b, k) random token indices per sample
        return torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(b)])

    def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # (b, n, D), (b, k) → (b·k, D)
        return torch.gather(x.float().cpu(), 1, idx[..., None].expand(-1, -1, x.shape[-1])).flatten(0, 1)

    def pre_u(mod, args, kwargs):
        if ctx["armed"]:
            hs, ehs, temb = kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["temb"]
            for t in (hs, ehs):
                _check_finite(t, "the sandwich input", block_name, ctx["step"])
            writer.append("sandwich_in_img", hs)  # (b, N_img, D)
            writer.append("sandwich_in_txt", ehs)  # (b, N_txt, D)
            writer.append("temb", temb)  # (b, D)
            batch = ctx["batch"]
            writer.append("item", torch.arange(batch.start, batch.stop))
            writer.append("schedule_step", torch.full((hs.shape[0],), ctx["step"]))
            writer.append("timestep", torch.full((hs.shape[0],), sigmas[ctx["step"]]))
            if base is not None:  # target = the original model's blocks u..d on this same input
                y = base.run(BlockState(hs, ehs, temb, kwargs["image_rotary_emb"]), u, d + 1)
                writer.append("original_out_img", y.hidden_states)
                writer.append("original_out_txt", y.encoder_hidden_states)

    def pre_i(mod, args, kwargs):
        if ctx["armed"]:
            ctx["x"] = (kwargs["hidden_states"], kwargs["encoder_hidden_states"])

    def post_i(mod, args, kwargs, output):
        if ctx["armed"]:
            (x_img, x_txt), (o_txt, o_img) = ctx.pop("x"), output
            for t in (x_img, x_txt, o_img, o_txt):
                _check_finite(t, "the input or output", block_name, ctx["step"])
            b = x_img.shape[0]
            ii, it = pick(x_img.shape[1], k_img, b), pick(x_txt.shape[1], k_txt, b)
            writer.append("block_in_img", gather(x_img, ii))
            writer.append("residual_img", gather(o_img - x_img, ii))
            writer.append("block_in_txt", gather(x_txt, it))
            writer.append("residual_txt", gather(o_txt - x_txt, it))

    def post_d(mod, args, kwargs, output):
        if ctx["armed"]:
            o_txt, o_img = output
            for t in (o_img, o_txt):
                _check_finite(t, "the sandwich output", block_name, ctx["step"])
            writer.append("sandwich_out_img", o_img)
            writer.append("sandwich_out_txt", o_txt)

    handles = [
        adapter.block(u).register_forward_pre_hook(pre_u, with_kwargs=True),
        adapter.block(i).register_forward_pre_hook(pre_i, with_kwargs=True),
        adapter.block(i).register_forward_hook(post_i, with_kwargs=True),
        adapter.block(d).register_forward_hook(post_d, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            sample_latents(model, sched, embeds, items, params.sampling, codec.latent_channels, codec.scale_factor,
                           on_step=on_step)
    finally:
        for hnd in handles:
            hnd.remove()
    writer.close()
    return {"step": step.k, "block": i, "block_name": block_name, "sandwich": [u, d], "samples": n_samples,
            "ls_rows_img": n_samples * k_img, "ls_rows_txt": n_samples * k_txt, "seconds": round(time.perf_counter() - t0, 2)}

