"""Activation capture for pruning step k (paper §3.1 and Algorithm 1: "collect the input and output").

The model as it stands after steps < k (earlier linears and LoRA loaded) generates two prompt sets,
kept apart as in the paper (LS on one set of images, Sandwich Training on another). At the schedule
steps of ``capture.timesteps`` (spread over the whole schedule) forward hooks record, per sample:

``calibration.zarr`` — least-squares data of Eq. 1, from the calibration set:
  block_in_{img,txt} / residual_{img,txt}   (rows, D)   block i's input and residual output
        (output − input), ``image_tokens`` / ``text_tokens`` random tokens per sample (text: among its
        unpadded tokens — Qwen-Image's padding, which the model never attends, is never a row). A single
        block's replacement is one linear for both streams; the solve weights image and text rows by
        the true token counts (attributes ``tokens`` and ``sampled``).
  temb       (sample, D)   the timestep embedding of the call (the one block i received; FLUX.2's
        blocks receive only its modulation: the model's embedder output) — a timestep-aware
        replacement's input: ``solve.condition: temb``

``training.zarr`` — Sandwich Training inputs, from the training set:
  latents    (sample, N_img, C_tok) the packed noisy latent the transformer received
  timestep, guidance (sample,)      exactly as passed to the transformer
  img_ids (N_img, 3), txt_ids (N_txt, 3)
  With the prompt's encoded states (``data/encoded/training.safetensors``) these are the whole model
  input, from which stage sandwich recomputes the sandwich's boundary states on the device
  (:mod:`fastflux_core.boundary`). Why not store the states themselves: at FLUX.1-dev scale one
  state is 28 MB per sample (4608 tokens × 3072, bf16) — 116 GB per step for the 2048 (input, output)
  pairs of 512 images × 4 timesteps — while a latent is 0.5 MB (4096 × 64). One sample per chunk:
  sandwich reads samples by index, so no chunk is read for a sample it does not need.

Both stores: prompt (sample,) index into the ``prompts`` attribute, seed (sample,), schedule_step,
timestep — so every sample names the item (prompt, seed) it came from, and hold-outs are by item.

Where the model's inputs come from (``capture.inputs``):

- ``trajectory`` (the paper's): the model at step k generates every item through the whole schedule
  and the hooks record at the captured steps — ``sampling.steps`` full forwards per item, every step.
- ``noised``: at each captured step the model gets x_t = (1 − σ_t)·x_0 + σ_t·ε, the flow-matching
  interpolation between the item's starting noise ε and x_0, the *full* model's final latent of the
  item (stage ``endpoints``, :func:`make_endpoints`: made once, shared by every step). One forward per
  captured step, and it stops after block i, the last block the calibration store records; the
  training store needs no forward at all. What changes: the model at step k is no longer fed its
  own trajectory but the full model's — the report's ``capture`` experiment measures what that costs
  in quality.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from fastflux_core.blocks import BlockAdapter, ModelInputs
from fastflux_core.chain import ChainState, PlanStep
from fastflux_core.chain_model import build_chain_model
from fastflux_core.codec import latent_ids, pack
from fastflux_core.errors import FastFluxError
from fastflux_core.io import load_tensors, save_tensors
from fastflux_core.params import Params, capture_schedule
from fastflux_core.prompts import GenItem, PromptEmbeds, derive_seed, prompt_items
from fastflux_core.sampling import initial_noise, latent_size, sample_latents, timesteps_for
from fastflux_core.source import load_codec, load_scheduler, load_transformer, on_device
from fastflux_core.stage import World
from fastflux_core.store import StoreWriter, calibration_specs, check_disk, estimate_bytes, training_specs


class NonFiniteActivations(FastFluxError):
    """NaN or inf in captured activations."""


def _check_finite(t: torch.Tensor, what: str, block: str, step: int) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise NonFiniteActivations(
            f"{bad} non-finite values (NaN/inf) in {what} of block {block} at schedule step {step}; "
            f"try model.dtype: float32 or bfloat16 (float16 overflows in FLUX)"
        )


class Armed:
    """What the next transformer call is for (schedule step, which items); hooks record only at
    captured steps. ``sample_latents`` calls it before every transformer call, with the call's inputs,
    which go to ``record`` (if set) at captured steps."""

    def __init__(self, steps: list[int], items: list[GenItem], sigmas: list[float], cfg: bool = False):
        self.steps, self.items, self.sigmas, self.cfg = set(steps), items, sigmas, cfg
        self.armed, self.step, self.batch, self.negative = False, -1, slice(0, 0), False
        self.record = None

    def __call__(self, step: int, batch: slice, inputs: ModelInputs | None = None, negative: bool = False) -> None:
        self.armed, self.step, self.batch, self.negative = step in self.steps, step, batch, negative
        if self.armed and self.record is not None:
            self.record(inputs)

    def tags(self, it: GenItem) -> tuple:
        """What tells a sample apart, for seeding its token picks: the item and the schedule step, and
        whether it is the item's unconditional twin (classifier-free guidance)."""
        return (it.prompt, it.seed, self.step, "negative") if self.negative else (it.prompt, it.seed, self.step)

    def write_items(self, writer: StoreWriter, timestep: torch.Tensor | None = None) -> None:
        """Per-sample bookkeeping of the current batch: prompt, seed, schedule step, and the timestep
        (sigma) — as the transformer received it when given, else the schedule's; with classifier-free
        guidance, whether the call was the negative prompt's."""
        chunk = self.items[self.batch]
        writer.append("prompt", torch.tensor([it.prompt for it in chunk]))
        writer.append("seed", torch.tensor([it.seed for it in chunk]))
        writer.append("schedule_step", torch.full((len(chunk),), self.step))
        if timestep is None:
            timestep = torch.full((len(chunk),), self.sigmas[self.step])
        writer.append("timestep", timestep.float())
        if self.cfg:
            writer.append("negative", torch.full((len(chunk),), self.negative))


class BlockIOHooks:
    """Records block i's input and residual output on random tokens (the LS data of Eq. 1). Each
    sample's tokens are drawn from a generator of its own — seeded by the item and schedule step — so
    they do not depend on which batch or which process captured it."""

    def __init__(self, writer: StoreWriter, armed: Armed, k_img: int, k_txt: int, seed: int, block_name: str):
        self.writer, self.armed, self.k_img, self.k_txt, self.name = writer, armed, k_img, k_txt, block_name
        self.seed = seed
        self.inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self.text_mask: torch.Tensor | None = None  # (b, N_txt) of the call, False at padding; None: none padded
        self.temb: torch.Tensor | None = None  # the model's last timestep embedding (FLUX.2 hands blocks none)
        self.adapter: BlockAdapter | None = None
        self.n_txt = 0

    def attach(self, adapter: BlockAdapter, index: int, n_txt: int) -> list:
        """Hook block ``index`` (and the model's timestep embedder) of a model whose prompts have ``n_txt``
        tokens; returns the handles to remove. The family's adapter reads a block call's streams."""
        self.adapter, self.n_txt = adapter, n_txt
        block = adapter.block(index)
        embedder = adapter.model.get_submodule(adapter.temb_module)
        return [embedder.register_forward_hook(lambda module, args, output: setattr(self, "temb", output)),
                block.register_forward_pre_hook(self.pre, with_kwargs=True),
                block.register_forward_hook(self.post, with_kwargs=True)]

    def _pick(self, n: int, k: int, stream: str, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(b, k) distinct token indices per sample, among its unpadded tokens where ``valid`` (b, n)
        marks them (Qwen-Image's text mask): padding, which the model never attends, is never a least-
        squares row. A prompt with fewer than k tokens repeats them (each ⌈k / tokens⌉ times at most)."""
        gens = [torch.Generator().manual_seed(derive_seed(self.seed, stream, *self.armed.tags(it)))
                for it in self.armed.items[self.armed.batch]]
        if valid is None:
            return torch.stack([torch.randperm(n, generator=g)[:k] for g in gens])
        picks = []
        for g, v in zip(gens, valid.cpu()):
            tokens = v.nonzero().flatten()  # all n when nothing is padded: the same draw as without a mask
            order = tokens[torch.randperm(len(tokens), generator=g)]
            picks.append(order.repeat(-(-k // len(order)))[:k])
        return torch.stack(picks)

    @staticmethod
    def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # (b, n, D), (b, k) → (b·k, D)
        return torch.gather(x.float().cpu(), 1, idx[..., None].expand(-1, -1, x.shape[-1])).flatten(0, 1)

    def pre(self, module, args, kwargs) -> None:
        if self.armed.armed:  # the model's forward passes keywords, an adapter's run positions
            self.inputs = self.adapter.call_inputs(args, kwargs, self.n_txt)
            self.text_mask = self.adapter.call_text_mask(args, kwargs)

    def post(self, module, args, kwargs, output) -> None:
        if not self.armed.armed:
            return
        (x_img, x_txt, temb), (o_txt, o_img) = self.inputs, self.adapter.call_outputs(output, self.n_txt)
        temb = self.temb if temb is None else temb
        if o_txt is None:  # a block without text output (SD3's last): zero text residual, never fitted
            o_txt = x_txt
        for t in (x_img, x_txt, o_img, o_txt):
            _check_finite(t, "the input or output", self.name, self.armed.step)
        ii, it = self._pick(x_img.shape[1], self.k_img, "img"), self._pick(x_txt.shape[1], self.k_txt, "txt", self.text_mask)
        self.writer.append("block_in_img", self._gather(x_img, ii))
        self.writer.append("residual_img", self._gather(o_img - x_img, ii))
        self.writer.append("block_in_txt", self._gather(x_txt, it))
        self.writer.append("residual_txt", self._gather(o_txt - x_txt, it))
        self.writer.append("temb", temb.float().cpu())  # (b, D)
        self.armed.write_items(self.writer)


class ModelInputRecorder:
    """Records what the transformer receives at captured steps: the sandwich's data, recomputed later."""

    def __init__(self, writer: StoreWriter, armed: Armed, guidance_scale: float):
        self.writer, self.armed, self.guidance_scale = writer, armed, guidance_scale

    def __call__(self, x: ModelInputs) -> None:
        latents, timestep, guidance = x.hidden_states, x.timestep, x.guidance  # (b, N_img, C_tok), (b,), (b,)
        if guidance is None:  # a model without guidance embedding: recorded, never used
            guidance = torch.full((latents.shape[0],), self.guidance_scale)
        self.writer.append("latents", latents)
        self.writer.append("guidance", guidance.float())
        self.armed.write_items(self.writer, timestep)


ENDPOINTS = Path("data/endpoints")  # stage endpoints: <set>.safetensors, the full model's final latents


def make_endpoints(params: Params, sets: dict[str, PromptEmbeds], out: Path, world: World = World()) -> dict:
    """Stage ``endpoints``: with ``capture.inputs: noised``, the full model's final latent (N, C, h, w)
    of every item of each prompt set, in item order → ``out/<set>.safetensors`` (on the main rank;
    every rank generates its share in whole sampling batches). With ``trajectory`` nothing is made:
    the record says so."""
    record = {"inputs": params.capture.inputs}
    if params.capture.inputs != "noised":
        return record
    model = on_device(load_transformer(params.model), params, "endpoints").eval()
    sched, codec = load_scheduler(params.model), load_codec(params.model, model)
    for name, embeds in sets.items():
        s = getattr(params.prompts, name)
        items = prompt_items(len(embeds.prompts), s.images_per_prompt, s.seed)
        mine = world.share(items, params.sampling.batch_size)
        part = {"latents": sample_latents(model, sched, embeds, mine, params.sampling, codec.latent_channels,
                                          codec.scale_factor)} if mine else {}
        got = world.gather(part, f"endpoints-{name}")
        if got is not None:
            save_tensors(out / f"{name}.safetensors", {"latents": got["latents"].contiguous()})
        record[name] = {"items": len(items)}
    return record


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t = (1 − σ)·x_0 + σ·ε: the flow-matching path between noise ε (σ = 1) and x_0 (σ = 0), the
    latents a sampler would hold at σ had it followed the straight line (N, C, h, w), float32.

    >>> noised(torch.ones(1), torch.zeros(1), 0.25)
    tensor([0.7500])
    """
    return (1.0 - sigma) * x0.float() + sigma * noise.float()


@torch.no_grad()
def noised_forwards(adapter: BlockAdapter, embeds: PromptEmbeds, items: list[GenItem], x0: torch.Tensor,
                    sampling, schedule: list[int], timesteps: torch.Tensor, latent_channels: int, on_step,
                    stop: int) -> None:
    """Capture's ``noised`` inputs: for each sampling batch of ``items`` (``x0``: their final latents,
    in the same order) and each captured schedule step s, ``on_step(s, batch, inputs)`` with the
    transformer inputs at x_t (:func:`noised`, σ = timesteps[s] / 1000 as the sampler passes it), then
    the model's forward through blocks 0 .. stop − 1 only (``stop`` 0: none — the training store
    records inputs alone). The same order of samples as :func:`~fastflux_core.sampling.sample_latents`,
    the unconditional twin after each batch's call with classifier-free guidance."""
    p = next(adapter.model.parameters())
    device, dtype = p.device, p.dtype
    h, w = x0.shape[-2:]
    img_ids = latent_ids(h, w, device, dtype)  # (h/2 · w/2, 3)
    txt_ids = torch.zeros(embeds.prompt_embeds.shape[1], 3, device=device, dtype=dtype)  # (T, 3)
    for start in range(0, len(items), sampling.batch_size):
        chunk = items[start : start + sampling.batch_size]
        b = len(chunk)
        eps = initial_noise(chunk, latent_channels, h, w)  # (b, C, h, w): the item's own starting noise
        prompts = [it.prompt for it in chunk]
        texts = [(False, embeds.select(prompts))] + ([(True, embeds.select(prompts, True))] if sampling.cfg else [])
        guidance = torch.full((b,), sampling.guidance_scale, device=device) if adapter.uses_guidance else None
        for s in schedule:
            t = timesteps[s]
            latents = pack(noised(x0[start : start + b], eps, float(t) / 1000)).to(device, dtype)  # (b, N_img, 4C)
            for negative, (prompt_embeds, pooled) in texts:  # with guidance: the prompts', then the negative's
                x = ModelInputs(latents, prompt_embeds.to(device, dtype), pooled.to(device, dtype),
                                t.expand(b).to(device, dtype) / 1000, img_ids, txt_ids, guidance, (h, w))
                on_step(s, slice(start, start + b), x, negative)
                if stop:
                    adapter.run(adapter.embed(x), 0, stop)


def capture_unit(batch_size: int, samples_per_item: int, shard_samples: int) -> int:
    """Items in the smallest piece of capture work that ranks can split: whole sampling batches (the
    batches of a single process, so every activation is the one-process one) whose samples — one per
    captured schedule step, two with classifier-free guidance — fill whole shards of the stores (no
    two ranks write one shard).

    >>> capture_unit(batch_size=1, samples_per_item=4, shard_samples=32)  # FLUX.1-dev: 8 items, 32 samples
    8
    """
    return math.lcm(batch_size, shard_samples // math.gcd(shard_samples, samples_per_item))


def capture_step(params: Params, step: PlanStep, state: ChainState, calibration: PromptEmbeds,
                 training: PromptEmbeds, block_name: str, out: Path, world: World = World(),
                 endpoints: Path = ENDPOINTS) -> dict:
    """Run both sets through the chain model after steps < k; write ``out/calibration.zarr`` and
    ``out/training.zarr``. Returns a summary (deterministic: no timings). With several ranks each
    captures its share of the items (:func:`capture_unit`) into the same stores. ``capture.inputs:
    noised`` reads the full model's final latents from ``endpoints`` (module doc)."""
    adapter = build_chain_model(params, state)
    model = on_device(adapter.model, params, f"capture@{step.k}").eval()
    i, (u, d) = step.block, step.sandwich
    cap = params.capture
    codec = load_codec(params.model, model)
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    n_img, n_txt, dim = (h // 2) * (w // 2), calibration.prompt_embeds.shape[1], model.inner_dim
    # capture.image_tokens/text_tokens ≤ n_img/n_txt: checked with the params (preflight.check_sizes)
    schedule = capture_schedule(cap.timesteps, params.sampling.steps)
    sets = {"calibration": (calibration, params.prompts.calibration), "training": (training, params.prompts.training)}
    items = {name: prompt_items(len(e.prompts), s.images_per_prompt, s.seed) for name, (e, s) in sets.items()}
    cfg = params.sampling.cfg  # every sample with its unconditional twin
    specs = {"calibration": calibration_specs(dim, cap.image_tokens, cap.text_tokens, cfg),
             "training": training_specs(n_img, adapter.token_channels(model.config), cfg)}
    per_item = len(schedule) * params.sampling.calls  # samples per item
    n_samples = {name: len(items[name]) * per_item for name in sets}
    unit = capture_unit(params.sampling.batch_size, per_item, cap.shard_samples)
    mine = {name: world.part(len(items[name]), unit) for name in sets}
    check_disk(out / "x", sum(estimate_bytes(specs[n], n_samples[n], cap.dtype) for n in sets),
               what=f"the activation stores of capture@{step.k} (calibration.zarr, training.zarr)")
    attrs = {"step": step.k, "block": i, "block_name": block_name, "kind": adapter.blocks[i].kind,
             "sandwich": [u, d], "replaced_before": list(step.replaced_before), "lora_blocks": step.lora_blocks(),
             "linear_blocks": step.linear_blocks(), "schedule_steps": schedule, "model_dtype": params.model.dtype,
             "inputs": cap.inputs}

    sched = load_scheduler(params.model)
    timesteps = timesteps_for(model, copy.deepcopy(sched), params.sampling.steps, n_img, torch.device("cpu"))
    sigmas = (timesteps / 1000).tolist()
    summary = {"step": step.k, "block": i, "block_name": block_name, "sandwich": [u, d], "schedule_steps": schedule,
               "inputs": cap.inputs}
    for name, (embeds, prompt_set) in sets.items():
        writer = StoreWriter(
            out / f"{name}.zarr", specs[name], n_samples[name], cap.shard_samples,
            cap.chunk_samples if name == "calibration" else 1, cap.dtype, cap.clevel, check_space=False,
            compression=cap.compression, world=world,
            span=range(mine[name].start * per_item, mine[name].stop * per_item),
            attrs={**attrs, "prompt_set": name, "prompts": embeds.prompts, "tokens": {"img": n_img, "txt": n_txt},
                   "sampled": {"img": cap.image_tokens, "txt": cap.text_tokens} if name == "calibration" else None,
                   "description": __doc__.split("\n\n")[0]})
        todo = items[name][mine[name].start : mine[name].stop]
        armed = Armed(schedule, todo, sigmas, cfg)
        if name == "calibration":
            hooks = BlockIOHooks(writer, armed, cap.image_tokens, cap.text_tokens,
                                 derive_seed(params.seed, "capture-tokens", step.k), block_name)
            handles = hooks.attach(adapter, i, n_txt)
        else:
            writer.write_static("img_ids", latent_ids(h, w), ("image_seq", "xyz"))
            writer.write_static("txt_ids", torch.zeros(n_txt, 3), ("text_seq", "xyz"))
            armed.record = ModelInputRecorder(writer, armed, params.sampling.guidance_scale)
            handles = []
        try:
            with torch.no_grad():
                if todo and cap.inputs == "noised":
                    x0 = load_tensors(endpoints / f"{name}.safetensors")["latents"][mine[name].start : mine[name].stop]
                    noised_forwards(adapter, embeds, todo, x0, params.sampling, schedule, timesteps,
                                    codec.latent_channels, armed, stop=i + 1 if name == "calibration" else 0)
                elif todo:
                    sample_latents(model, sched, embeds, todo, params.sampling, codec.latent_channels,
                                   codec.scale_factor, on_step=armed)
        except BaseException:
            writer.abort()  # no shard write may land after the stage's output is removed
            raise
        finally:
            for hnd in handles:
                hnd.remove()
        writer.close()
        summary[name] = {"prompts": len(embeds.prompts), "items": len(items[name]), "samples": n_samples[name]}
    summary["ls_rows_img"] = n_samples["calibration"] * cap.image_tokens
    summary["ls_rows_txt"] = n_samples["calibration"] * cap.text_tokens
    return summary
