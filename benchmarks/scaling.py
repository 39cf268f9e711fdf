"""Data-parallel scaling of generation (issue 15): items/s with 1, 2, … processes and the parallel
efficiency, on this machine (CPU processes talking gloo) or on GPUs (one process per GPU, NCCL).

Generation is what the heavy stages spend their time on (reference, 57 ablations, capture, evaluate,
sweep): every process runs :func:`fastflux_core.reference.generate_with` on its share of the items —
in whole sampling batches — and the main rank gathers the images, exactly as the stages do. The
model is the embedded default's architecture (``params.yaml``'s ``embedded`` section, random
weights: speed does not depend on them) at the configured sampling size and steps. Each count is
started by ``torch.distributed.run``; the time is ``torch.utils.benchmark``'s, from a barrier to the
gathered images on the main rank, best of ``--repeats``.

efficiency(N) = items/s with N processes ÷ (N × items/s with one). Here, 2 processes share 2 CPU
cores, so each gets one core where the single process had two — the CPU figure is a lower bound on
what separate GPUs give (each rank its own device; the gather is a few MB of PNG-sized arrays).

Run: python benchmarks/scaling.py [--procs 1,2] [--items 64] [--device cpu]
Prints and writes benchmarks/results/scaling.json.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> None:
    """One rank: generate ``--items`` items with the world's share, time it, rank 0 writes the result."""
    import torch
    import torch.utils.benchmark as tb

    import yaml

    from fastflux_core.codec import PixelCodec
    from fastflux_core.embedded import build_model, build_scheduler
    from fastflux_core.layouts import EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS
    from fastflux_core.params_file import parse_params
    from fastflux_core.placement import resolve_device
    from fastflux_core.prompts import PromptEmbeds, prompt_items
    from fastflux_core.reference import generate_with
    from fastflux_core.stage import current_world

    params = parse_params(yaml.safe_load(Path(args.params).read_text()))  # the schema (prompt files unused)
    world = current_world(args.device)
    device = resolve_device(args.device)  # under the launcher: this rank's GPU (LOCAL_RANK)
    torch.manual_seed(0)
    model = build_model(params.embedded, EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS).to(device).eval()
    g = torch.Generator().manual_seed(0)
    n_prompts = 8
    embeds = PromptEmbeds([f"p{i}" for i in range(n_prompts)], torch.randn(n_prompts, 8, EMBEDDED_TEXT_DIMS[0], generator=g),
                          torch.randn(n_prompts, EMBEDDED_TEXT_DIMS[1], generator=g))
    items = prompt_items(n_prompts, -(-args.items // n_prompts), 0)[: args.items]
    sampling = params.sampling.model_copy(update={"batch_size": args.batch_size})
    codec, scheduler = PixelCodec(EMBEDDED_LATENT_CHANNELS), build_scheduler()
    calls = iter(range(10**6))

    def run() -> None:
        world.barrier()
        generate_with(model, scheduler, codec, embeds, items, sampling, world, tag=f"t{next(calls)}")

    run()  # warm-up
    times = [tb.Timer("run()", globals={"run": run}).timeit(1).mean for _ in range(args.repeats)]
    if world.is_main:
        Path(args.out).write_text(json.dumps({"seconds": min(times), "all_seconds": times}))
    world.end()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,2", help="process counts to compare")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8, help="sampling batch (ranks split whole batches)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.procs.split(",")):
            out = Path(tmp) / f"{n}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr",
                   "127.0.0.1", "--master_port", str(_free_port()), __file__, "--worker", "--out", str(out),
                   "--items", str(args.items), "--batch-size", str(args.batch_size), "--repeats",
                   str(args.repeats), "--device", args.device, "--params", str(Path(args.params).absolute())]
            threads = max(1, (os.cpu_count() or 1) // n) if args.device == "cpu" else 1
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(HERE.parent)}
            subprocess.run(cmd, check=True, env=env, cwd=tmp)
            rows.append({"processes": n, "threads_per_process": threads, **json.loads(out.read_text())})
    base = args.items / rows[0]["seconds"]
    for r in rows:
        r["items_per_s"] = round(args.items / r["seconds"], 3)
        r["efficiency"] = round(r["items_per_s"] / (r["processes"] / rows[0]["processes"] * base), 3)
    from common import report

    report("scaling", {"device": args.device, "items": args.items, "batch_size": args.batch_size,
                       "cpu_count": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
