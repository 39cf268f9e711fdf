"""The budget's device-memory prediction against a real GPU at FLUX.1-dev's shapes, nothing downloaded.

Every stage kind the budget measures — encode (CLIP-L + T5-XXL), sampling (what reference, ablate,
evaluate and sweep run) resident and offloaded, capture (sampling with the block hooks), solve, the
sandwich of a double and of a single block, the finisher's training step — runs twice, on models
built from FLUX.1-dev's published configs with random weights (``examples/flux1-dev/params.yaml``;
no folder, no download): as ``fastflux budget`` runs it (fake tensors: the *prediction*) and on real
tensors on the GPU, where ``torch.cuda.max_memory_allocated`` above what was allocated before is the
*measurement*. The stage's own device code runs both times (``fastflux_core.stage_peaks``). A case
predicted above the card's memory is not run, and an
out-of-memory error of a case predicted to fit is recorded as such — a prediction that failed.

``--device cpu`` (what CI runs): the predictions alone — every case's fake run — and no measurement;
there is no GPU to compare with. Prints a table, writes benchmarks/results/gpu_check.json.
Run: python benchmarks/gpu_check.py --device cuda   (or: bash scripts/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import yaml

from common import report

from fastflux_core import stage_peaks
from fastflux_core.params_file import parse_params

GiB = 2**30


def flux1_dev_params(path: str = "examples/flux1-dev/params.yaml"):
    """The README's FLUX.1-dev example, its model folder made absent on purpose: FLUX.1-dev's published
    configs, random weights."""
    d = yaml.safe_load(open(path))
    d["model"].update(path="/nonexistent/FLUX.1-dev", device="cuda")
    return parse_params(d)


def cases(params) -> dict[str, Callable[[str | None], stage_peaks.Measured]]:
    """Each stage kind's measurement; the argument is ``real``: None (fake) or the device type."""
    sandwich = {f"sandwich ({kind})": (lambda real, c=stage_peaks.sandwich_case(params, kind):
                                       stage_peaks.measure_sandwich(params, "resident", *c, real=real))
                for kind in dict.fromkeys(stage_peaks.block_kinds(params))}
    return {
        "encode": lambda real: stage_peaks.measure_encode(params, real=real),
        "sampling (resident)": lambda real: stage_peaks.measure_sampling(params, "resident", real=real),
        "sampling (offloaded)": lambda real: stage_peaks.measure_sampling(params, "offloaded", real=real),
        "capture (offloaded)": lambda real: stage_peaks.measure_sampling(params, "offloaded", capture=True, real=real),
        "solve": lambda real: stage_peaks.measure_solve(params, real=real),
        **sandwich,
        "finisher step": lambda real: stage_peaks.measure_distill(params, "finish", real=real),
    }


def measure(fn: Callable[[str | None], stage_peaks.Measured], device: str) -> dict:
    """The prediction, then (on CUDA) the same code on real tensors."""
    start = time.perf_counter()
    predicted = fn(None).peak
    row = {"predicted_GiB": round(predicted / GiB, 3), "measured_GiB": None, "ratio": None, "note": None}
    if device == "cuda":
        card = torch.cuda.get_device_properties(0).total_memory
        if predicted > card:  # the prediction says it cannot fit: running it would only confirm an OOM
            row["note"] = f"not run: predicted above this card's {card / GiB:.1f} GiB"
        else:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            try:
                fn("cuda")
                measured = torch.cuda.max_memory_allocated() - before
                row.update(measured_GiB=round(measured / GiB, 3), ratio=round(predicted / max(measured, 1), 3))
            except torch.cuda.OutOfMemoryError:
                row["note"] = f"out of memory on this card ({card / GiB:.1f} GiB) though predicted to fit"
            torch.cuda.empty_cache()
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--params", default="examples/flux1-dev/params.yaml")
    ap.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    params = flux1_dev_params(args.params)
    todo = cases(params)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    rows = {}
    print(f"{'case':24} {'predicted GiB':>14} {'measured GiB':>13} {'ratio':>7} {'s':>6}", flush=True)
    for name, fn in todo.items():
        rows[name] = measure(fn, args.device)
        r = rows[name]
        print(f"{name:24} {r['predicted_GiB']:14.3f} {r['measured_GiB'] if r['measured_GiB'] is not None else '-':>13} "
              f"{r['ratio'] if r['ratio'] is not None else '-':>7} {r['seconds']:6.1f}  {r['note'] or ''}", flush=True)
    result = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              "params": args.params, "torch": torch.__version__, "cases": rows}
    report("gpu_check", result)
    return result


if __name__ == "__main__":
    main()
