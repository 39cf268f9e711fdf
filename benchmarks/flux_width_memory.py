"""The budget's device-memory prediction against real tensors, on the FLUX-width rehearsal model.

For each stage kind the budget measures (encode, sampling = reference/ablate/evaluate/sweep, capture,
solve, sandwich for a double- and a single-block replacement), the same measurement runs twice: as
the budget runs it — fake tensors on a fake CUDA device — and on real tensors on this CPU
(``fake_gpu.space("cpu")``), with torch's MemTracker counting real allocations. The stage's own
device code runs both times (``sampling.velocity`` with capture's hooks, the VAE decode,
``GramAccumulator``, the text encoders, BoundaryStates' recompute and the sandwich's training step).
Shapes and configs are those of ``examples/flux-width/params.yaml`` (384², 128 text tokens, bf16,
FLUX.1-dev's block width, 1 double + 3 single blocks). One difference is accounted for, not hidden:
the sandwich leaves the blocks after d on the host, which on a GPU is not the device but on this CPU
is the same memory MemTracker counts — ``real_device_GiB`` subtracts their bytes (``host_GiB``) from
the real peak. Why not wrap a whole stage: on the CPU,
MemTracker does not see weights that diffusers loads from safetensors (they never pass through
torch's dispatcher); here every weight is created under the tracker's eye and tracked explicitly.

Prints a table and writes benchmarks/results/flux_width_memory.json.
Run: python benchmarks/flux_width_memory.py [--models /tmp/fastflux-flux-width/models]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from common import report

from fastflux_core import stage_peaks
from fastflux_core.params_file import parse_params
from fastflux_core.rehearsal import example_params

GiB = 2**30


def host_bytes(params, d: int) -> int:
    """Bytes of the blocks after d: stage sandwich never places them on the device."""
    from fastflux_core.families import adapter_for

    with torch.device("meta"):
        adapter = adapter_for(stage_peaks.build_transformer(params))
    return sum(p.numel() * p.element_size() for j in range(d + 1, len(adapter.blocks))
               for p in adapter.block(j).parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path("/tmp/fastflux-flux-width/models"),
                    help="written by scripts/make_flux_width_folder.py (written here when missing)")
    args = ap.parse_args()
    if not (args.models / "flux-width" / "model_index.json").is_file():
        from fastflux_core.rehearsal import write_flux_width_folder

        write_flux_width_folder(args.models / "flux-width", 1, 3)
    params = parse_params(yaml.safe_load(example_params(args.models.resolve())))
    host = {f"sandwich ({kind})": host_bytes(params, stage_peaks.sandwich_case(params, kind)[2]) for kind in ("double", "single")}
    cases = {
        "encode": lambda real: stage_peaks.measure_encode(params, real="cpu" if real else None),
        "sampling": lambda real: stage_peaks.measure_sampling(params, "resident", real="cpu" if real else None),
        "capture": lambda real: stage_peaks.measure_sampling(params, "resident", capture=True, real="cpu" if real else None),
        "solve": lambda real: stage_peaks.measure_solve(params, real="cpu" if real else None),
        **{f"sandwich ({kind})": (lambda real, c=stage_peaks.sandwich_case(params, kind):
                                  stage_peaks.measure_sandwich(params, "resident", *c, real="cpu" if real else None))
           for kind in ("double", "single")},
    }
    rows = {}
    for name, fn in cases.items():
        t0 = time.perf_counter()
        predicted = fn(False).peak
        t1 = time.perf_counter()
        real_all = fn(True).peak
        t2 = time.perf_counter()
        real = real_all - host.get(name, 0)
        rows[name] = {"predicted_GiB": round(predicted / GiB, 3), "real_GiB": round(real_all / GiB, 3),
                      "host_GiB": round(host.get(name, 0) / GiB, 3), "real_device_GiB": round(real / GiB, 3),
                      "predicted_over_real": round(predicted / real, 3), "within_15pct": abs(predicted / real - 1) <= 0.15,
                      "seconds_fake": round(t1 - t0, 1), "seconds_real": round(t2 - t1, 1)}
        print(f"{name:20s} predicted {predicted / GiB:7.3f} GiB   real {real_all / GiB:7.3f} GiB "
              f"(- host {host.get(name, 0) / GiB:.3f}) = {real / GiB:7.3f}   ratio {predicted / real:.3f}", flush=True)
    report("flux_width_memory", {"params": "examples/flux-width/params.yaml", "device_real": "cpu (MemTracker)",
                                 "device_predicted": "fake cuda (FakeTensorMode + MemTracker)", "stages": rows})


if __name__ == "__main__":
    main()
