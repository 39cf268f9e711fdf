"""The budget command: device memory, disk and compute of every stage at the configured shapes —
measured without a GPU.

Memory and FLOPs come from each stage's own device code run on fake tensors
(:mod:`fastflux_core.stage_peaks`, on :mod:`fastflux_core.fake_gpu`); this module picks each stage's
placement (:func:`choose_placement`, what ``placement.choose`` asks in its own process), sums them into
one row per stage (:func:`plan_budget`) and prints the table.

Disk: bytes each stage writes (activation stores from their specs, chain states and linears from
their shapes, images at 8 bits per channel), and with DVC's cache (a copy unless reflinks or links are
configured). Compute: FLOPs counted by ``FlopCounterMode`` on the same fake runs, times how often
the stage repeats them; hours at ``--tflops``.

Run: python -m fastflux_core.budget [--params params.yaml] [--gpu-memory-gb 22] [--tflops 400]
     [--consumer-tflops 41] [--gpus 2] [--prompts calibration=512,…] [--json out.json]
     python -m fastflux_core.budget --choose capture@1   (the placement one stage takes: what a stage asks)
     python -m fastflux_core.budget --check              (every stage fits: what stage validate asks)
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fastflux_core.blocks import STREAMS
from fastflux_core.capture import capture_unit
from fastflux_core.errors import FastFluxError
from fastflux_core.fake_gpu import OverLimit, stop_above
from fastflux_core.families import adapter_for
from fastflux_core.io import atomic_file
from fastflux_core.params import capture_schedule, importance_sampling, n_replaced
from fastflux_core.params_file import read_params
from fastflux_core.placement import DeviceMemoryError, Placement
from fastflux_core.preflight import prompt_counts
from fastflux_core.prompts import SETS
from fastflux_core.shapes import Shapes, capture_bytes
from fastflux_core.stage_peaks import (Measured, block_kinds, build_transformer, measure_distill, measure_encode,
                                       measure_sampling, measure_sandwich, measure_solve, model_dtype, sandwich_case,
                                       stage_peak)
from fastflux_core.training import held_out_prompts

GiB = 2**30


def choose_placement(stage: str, params, gpu_memory_gb: float) -> Placement:
    """Resident when the stage's measured peak fits ``gpu_memory_gb``, else offloaded if that fits, else
    :class:`DeviceMemoryError` (one line). The resident measurement stops as soon as it is over."""
    limit = gpu_memory_gb * GiB
    try:
        with stop_above(limit):
            if stage_peak(stage, params, "resident") <= limit:
                return "resident"
    except OverLimit:
        pass
    peak = stage_peak(stage, params, "offloaded")
    if peak <= limit:
        return "offloaded"
    raise DeviceMemoryError(
        f"stage {stage} needs {peak / GiB:.1f} GiB of device memory even with its blocks offloaded "
        f"(more resident), model.gpu_memory_gb is {gpu_memory_gb:g}: "
        f"lower sampling.batch_size / sandwich.micro_batch / text.batch_size, or run "
        f"'python -m fastflux_core.budget' to see every stage")


def check_fits(params, gpu_memory_gb: float, assumed: dict[str, int]) -> None:
    """:class:`DeviceMemoryError` naming the first stage whose peak (in the placement it would take)
    is over ``gpu_memory_gb``."""
    rows, _ = plan_budget(params, gpu_memory_gb, 400.0, assumed)
    for r in rows:
        if r.peak_gib > gpu_memory_gb:
            raise DeviceMemoryError(f"stage {r.stage} needs {r.peak_gib:.1f} GiB of device memory ({r.placement}), "
                                    f"model.gpu_memory_gb is {gpu_memory_gb:g}: lower sampling.batch_size / "
                                    f"sandwich.micro_batch / text.batch_size, or see 'python -m fastflux_core.budget'")


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
    ``gpus`` ranks in whole ``unit``-item pieces (:meth:`fastflux_core.stage.World.part`).

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
    counts = prompt_counts(params.prompts, assumed)
    items = {k: counts[k] * getattr(params.prompts, k).images_per_prompt for k in counts}
    steps, dtype_bytes = params.sampling.steps, model_dtype(params).itemsize
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
    calls = params.sampling.calls  # classifier-free guidance: two calls of a batch per step, the same peak
    t, dec = calls * samp.flops["transformer_per_item_step"], samp.flops["decode_per_item"]
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
    t_i, dec_i, shapes_i = calls * samp_i.flops["transformer_per_item_step"], samp_i.flops["decode_per_item"], Shapes.of(imp_params)
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
    store = capture_bytes(params.capture, params.sampling, shapes, items)
    unit = capture_unit(batch, n_sched * calls, c.shard_samples)
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
    rows_ls = items["calibration"] * n_sched * calls * (c.image_tokens + c.text_tokens)
    per_stream = shapes.dim * shapes.dim + shapes.dim + (shapes.dim * shapes.dim if params.solve.condition == "temb" else 0)
    linear_bytes = 2 * per_stream * 4  # two streams (double block), float32; temb: U (D × D) each
    add("solve@k", k_steps, "resident", sol, k_steps * linear_bytes, True,
        k_steps * (2 * 2 * rows_ls * sol.flops["per_row"] + sol.flops["solve"]),
        k_steps * (2 * 2 * rows_ls * sol.flops["per_row"] / gpus + sol.flops["solve"]))
    sw = [best(f"sandwich-{kind}", lambda p, kind=kind: measure_sandwich(params, p, *sandwich_case(params, kind)))
          for kind in dict.fromkeys(block_kinds(params))]
    place_w = "/".join(sorted({pw for pw, _ in sw})) if len({pw for pw, _ in sw}) > 1 else sw[0][0]
    sand = max((m for _, m in sw), key=lambda m: m.peak)
    samples = items["training"] * n_sched * calls  # with guidance, each with its unconditional twin
    recompute = samples * sand.flops["recompute_per_sample_block"] * n_blocks * 2 // 3
    s = params.sandwich
    probe_rates = len(s.probe_rates) if s.learning_rate == "auto" else 0  # each tried for probe_steps, then checked
    train = (s.train_steps + probe_rates * s.probe_steps) * s.batch_size * sand.flops["train_per_sample"]
    # the held-out check (sandwich.HeldOutCheck): up to round_samples held-out samples at the start, every
    # eval_every steps and after each probe; then the start and the state kept on every held-out sample
    # every sample of a held-out prompt: its images at every captured timestep
    held_out = held_out_prompts(counts["training"], s.holdout) * params.prompts.training.images_per_prompt * n_sched * calls
    checked = (1 + math.ceil(s.train_steps / max(s.eval_every, 1)) + probe_rates) * min(s.round_samples, held_out)
    check_flop = (checked + 2 * held_out) * sand.flops["check_per_sample"]
    states = sum(k * linear_bytes for k in range(1, k_steps + 1))  # each state holds every linear so far
    add("sandwich@k", k_steps, place_w, sand, states, True, k_steps * (recompute + train + check_flop),
        k_steps * (rank_share(samples, 1, gpus) * recompute + rank_share(held_out, 1, gpus) * check_flop
                   + busiest_share(s.batch_size, s.micro_batch, gpus) * train))
    n_train = samples - held_out  # distillation: each training sample's teacher output once
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
    """Size of the exported model at ``ratio``: the base's parameters, minus the blocks assemble replaces
    (``n_replaced``: floor(ratio · N), at most the chain's ``k``), plus their linears (D × D + D). Which
    blocks the ranking picks is not known here: the last block's kind stands for them."""
    with torch.device("meta"):
        model = build_transformer(params)
    a = adapter_for(model)
    total = sum(p.numel() for p in model.parameters())
    n = max(0, min(k, n_replaced(params.ratio, len(a.blocks))))
    last = a.blocks[-1]
    block = sum(p.numel() for p in a.block(last.index).parameters())
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    linear = len(STREAMS[last.kind]) * (dim * dim + dim)
    return (total - n * (block - linear)) * model_dtype(params).itemsize


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
    over = [r for r in rows if r.peak_gib > summary["gpu_memory_gb"]]
    if over:  # what the card cannot run even offloaded: what it needs
        hint = {"encode": "its text encoders are loaded whole — run it on a card with that much"}
        lines.append(f"does not fit {summary['gpu_memory_gb']:g} GiB: " + "; ".join(
            f"{r.stage} needs {r.peak_gib:.1f} GiB ({r.placement}): "
            + hint.get(r.stage, "lower its batch sizes, or run it on a card with that much") for r in over))
    if n > 1:
        lines.append(f"on {n} GPUs (data-parallel, ideal scaling of each rank's share): {summary['total_hours_gpus']} h, "
                     f"importance {summary['importance_hours_gpus']} h; benchmarks/scaling.py measures the efficiency")
    return "\n".join(lines)


def _prompt_counts(ap: argparse.ArgumentParser, text: str) -> dict[str, int]:
    """``--prompts calibration=512,training=512,…``: a count for each of the four sets."""
    counts = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in SETS or not value.strip().isdigit():
            ap.error(f"--prompts wants set=count pairs for {', '.join(SETS)}, got {item!r}")
        counts[name.strip()] = int(value)
    if set(counts) != set(SETS):
        ap.error(f"--prompts needs a count for each of {', '.join(SETS)}; missing: {', '.join(sorted(set(SETS) - set(counts)))}")
    return counts


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
    ap.add_argument("--choose", metavar="STAGE", default=None, help="only print the placement STAGE takes on a GPU of "
                    "--gpu-memory-gb (resident or offloaded; what a stage asks, fastflux_core.placement.choose)")
    ap.add_argument("--check", action="store_true", help="only check that every stage fits --gpu-memory-gb (what "
                    "stage validate asks): one line naming the first that does not, exit status 3")
    args = ap.parse_args(argv)
    for name in ("tflops", "consumer_tflops", "gpu_memory_gb"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    if args.gpus < 1:
        ap.error(f"--gpus must be at least 1, got {args.gpus}")
    assumed = _prompt_counts(ap, args.prompts)
    params = read_params(args.params)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise FastFluxError(f"--json {args.json}: the folder {Path(args.json).resolve().parent} does not exist")
    gb = args.gpu_memory_gb or params.model.gpu_memory_gb
    if args.choose or args.check:  # "does not fit": a DeviceMemoryError, its own exit status (cli.run_command)
        print(choose_placement(args.choose, params, gb)) if args.choose else check_fits(params, gb, assumed)
        return
    rows, summary = plan_budget(params, gb, args.tflops, assumed, progress=lambda s: print(f"measuring {s} …", flush=True),
                                gpus=args.gpus, consumer_tflops=args.consumer_tflops)
    print(format_table(rows, summary))
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps({"rows": [r.__dict__ for r in rows], "summary": summary}, indent=1))


if __name__ == "__main__":
    from fastflux_core.cli import run_command

    run_command(main)  # a user-fixable error: one line, exit 2 (does not fit: 3)
