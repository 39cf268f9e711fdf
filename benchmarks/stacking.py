"""Does a pruned export stack with caches and quantisation? Latency and fidelity at FLUX.1-dev's width.

Users of pruned FLUX checkpoints run them with diffusers' caches and with weight quantisation. This
benchmark takes the FLUX-width rehearsal (:mod:`fastflux_core.rehearsal`: FLUX.1-dev's transformer
config — hidden 3072, 24 heads, joint 4096 — with ``--double`` + ``--single`` blocks, bf16, random
weights, small VAE and text encoders), replaces ``--replace`` blocks by BRLL linears (small random
W, b ~ 0.05 · N(0, 1): stand-ins for solved ones, so "pruned" is far from the base here — its real cost is
stage evaluate's on a trained model), exports it as stage export does and loads it back as a user does
(``export_folder.load_pipeline``). Then each arm runs the whole ``FluxPipeline`` call — ``--steps``
denoising steps, as caches act across steps — on the same prompts and seeds:

- ``base``, ``base + FBC``, ``base + int8``: the references (what each option does without pruning);
- ``pruned``; ``pruned + FBC`` (diffusers' First-Block Cache, ``--fbc-threshold``); ``pruned +
  TaylorSeer`` (diffusers' TaylorSeer cache, ``cache_interval`` 2); ``pruned + int8`` (torchao
  weight-only int8, what runs on a CPU); ``pruned + int8 + FBC``.

Per arm: the latency ratio to the base (whole pipeline call to latents; timed in A B B A phases
against the base, :func:`fastflux_core.speed.latency_phases`, median, with the per-round ratio's IQR),
the share of transformer blocks actually computed (a counter on every block: caches skip them), and
fidelity from the same seeds — PSNR and SSIM per image (and LPIPS with ``--lpips-backbone``), mean over
the images (:mod:`fastflux_core.fidelity`) — against the base's images and, for the pruned arms,
against the plain pruned model's (what the cache or the quantisation costs on top of pruning).

What the numbers are and are not: the transformer is FLUX.1-dev's width, so where time goes (matmuls
of 3072-wide blocks) is FLUX.1-dev's; the weights are random, so fidelity says how far each option
moves the output of *this* model, not image quality — and First-Block Cache's hit rate depends on how
a trained model's first-block residual changes between steps, which random weights do not have.

Prints a table and writes benchmarks/results/stacking.json (47 minutes on 2 cores at the defaults,
nothing else running). On a real model, ``--base`` (its pipeline folder) and ``--export`` (stage
export's folder) run the same arms on it instead of the rehearsal, e.g. on a GPU: ``--base
/models/FLUX.1-dev --export data/export --device cuda --size 1024 --steps 28`` (the base's pipeline
and one arm's on the device at once: ~64 GB for FLUX.1-dev in bf16).
Needs torchao (``pip install -e ".[test]"``, as scripts/setup.sh installs).
Run: python benchmarks/stacking.py [--steps 8] [--repeats 4] [--lpips-backbone alexnet-owt-7be5be79.pth]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import report

from fastflux_core.export import to_pruned
from fastflux_core.export_folder import load_pipeline, write_pipeline
from fastflux_core.families import adapter_for
from fastflux_core.fidelity import Lpips, fidelity_scores
from fastflux_core.rehearsal import write_flux_width_folder
from fastflux_core.speed import latency_phases

ARMS = ("base + FBC", "base + int8", "pruned", "pruned + FBC", "pruned + TaylorSeer", "pruned + int8",
        "pruned + int8 + FBC")
PROMPTS = ["a red cube on a table", "a lighthouse at dusk", "two cats on a sofa", "a city street in the rain"]


def pruned_export(base_folder: Path, replace: list[int], root: Path) -> Path:
    """The base's transformer with BRLL linears (W, b ~ 0.05 · N(0, 1)) at ``replace``, saved as stage
    assemble saves it and exported as stage export does."""
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(str(base_folder / "transformer"), torch_dtype=torch.bfloat16)
    a, g = adapter_for(model), torch.Generator().manual_seed(0)
    for i in replace:
        rep = a.replacement(i)
        for s in rep.streams:
            rep.set_affine(s, torch.randn(model.inner_dim, model.inner_dim, generator=g) * 0.05,
                           torch.randn(model.inner_dim, generator=g) * 0.05)
        a.swap(i, rep.to(torch.bfloat16))
    to_pruned(model, replace).save_pretrained(str(root / "assemble" / "transformer"))
    (root / "export").mkdir()
    write_pipeline(root / "assemble" / "transformer", base_folder, root / "export")
    return root / "export"


class BlockCounter:
    """Counts the blocks computed: a block's call counts when a layer inside it runs (a cache that
    reuses a block's output calls the block but not its layers) — once per call, though a single
    block's BRLL linear runs once per stream."""

    def __init__(self, transformer):
        self.calls, self.open = 0, set()
        a = adapter_for(transformer)
        for i in range(len(a.blocks)):
            block = a.block(i)
            block.register_forward_pre_hook(lambda *_, i=i: self.open.add(i))
            first = next(m for m in block.modules() if isinstance(m, torch.nn.Linear))
            first.register_forward_hook(lambda *_, i=i: self._computed(i))
        self.per_call = len(a.blocks)

    def _computed(self, i: int) -> None:
        if i in self.open:
            self.open.discard(i)
            self.calls += 1


def make_arm(name: str, base_folder: Path, export: Path, fbc_threshold: float, device: str = "cpu"):
    """The pipeline of arm ``name`` (``base`` / ``pruned`` with ``+ FBC``, ``+ TaylorSeer``, ``+ int8``)
    on ``device``."""
    from diffusers import FirstBlockCacheConfig, FluxPipeline, TaylorSeerCacheConfig

    if name.startswith("base"):
        pipe = FluxPipeline.from_pretrained(str(base_folder), torch_dtype=torch.bfloat16)
    else:
        pipe = load_pipeline(export, torch_dtype=torch.bfloat16)
    pipe.to(device)
    if "int8" in name:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(pipe.transformer, Int8WeightOnlyConfig())
    counter = BlockCounter(pipe.transformer)  # before the caches: their hooks wrap the blocks' forward
    if "FBC" in name:
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=fbc_threshold))
    if "TaylorSeer" in name:
        pipe.transformer.enable_cache(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                            taylor_factors_dtype=torch.float32))
    pipe.set_progress_bar_config(disable=True)
    return pipe, counter


def run(pipe, size: int, steps: int, output_type: str):
    """The pipeline on every prompt, one image each, seed = the prompt's index (same noise in every arm);
    returns once the device has finished (a CUDA call may return before its kernels ran)."""
    out = run_async(pipe, size, steps, output_type)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
    return out


def run_async(pipe, size: int, steps: int, output_type: str):
    return [pipe(prompt=p, height=size, width=size, num_inference_steps=steps, guidance_scale=3.5,
                 generator=torch.Generator().manual_seed(i), output_type=output_type, max_sequence_length=32).images[0]
            for i, p in enumerate(PROMPTS)]


def to_uint8(images: list) -> np.ndarray:
    return np.stack([(np.asarray(im, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8) for im in images])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--double", type=int, default=1, help="double blocks (FLUX.1-dev: 19)")
    ap.add_argument("--single", type=int, default=3, help="single blocks (FLUX.1-dev: 38)")
    ap.add_argument("--replace", default="2", help="blocks replaced by BRLL linears (comma-separated indices)")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--fbc-threshold", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4, help="timed pipeline calls per arm and per base (A B B A)")
    ap.add_argument("--lpips-backbone", type=Path, help="torchvision AlexNet weights: LPIPS beside PSNR and SSIM")
    ap.add_argument("--base", type=Path, help="a FLUX.1 pipeline folder (e.g. FLUX.1-dev): the arms run on it and "
                    "--export instead of the rehearsal (--double, --single, --replace then unused)")
    ap.add_argument("--export", type=Path, help="stage export's folder of a model pruned from --base (data/export)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms (default: all)")
    ap.add_argument("--device", default="cpu", help="where the pipelines run (cuda: the base's and one arm's at once)")
    args = ap.parse_args(argv)
    if (args.base is None) != (args.export is None):
        ap.error("--base and --export go together: the base pipeline and the export pruned from it")
    torch.manual_seed(0)
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(ARMS)}")
    lpips = Lpips(args.lpips_backbone, torch.device("cpu")) if args.lpips_backbone else None

    with tempfile.TemporaryDirectory(prefix="fastflux-stacking-") as tmp, torch.inference_mode():
        root = Path(tmp)
        if args.base:
            base_folder, export = args.base, args.export
        else:
            base_folder = write_flux_width_folder(root / "base", args.double, args.single)
            export = pruned_export(base_folder, [int(i) for i in args.replace.split(",")], root)
        base, base_counter = make_arm("base", base_folder, export, args.fbc_threshold, args.device)
        base_images = to_uint8(run(base, args.size, args.steps, "np"))
        pruned = make_arm("pruned", base_folder, export, args.fbc_threshold, args.device)[0]
        pruned_images = to_uint8(run(pruned, args.size, args.steps, "np"))
        pruned = None
        n_blocks = base_counter.per_call
        rows = {}
        for name in arms:
            pipe, counter = make_arm(name, base_folder, export, args.fbc_threshold, args.device)
            images = to_uint8(run(pipe, args.size, args.steps, "np"))
            computed = counter.calls / (n_blocks * args.steps * len(images))  # share of the base's block calls
            fidelity = {k: float(v.mean()) for k, v in fidelity_scores(images, base_images, lpips).items()}
            if name.startswith("pruned") and name != "pruned":
                fidelity.update({f"{k}_vs_pruned": float(v.mean())
                            for k, v in fidelity_scores(images, pruned_images, lpips).items()})
            b, p = latency_phases((contextlib.nullcontext, contextlib.nullcontext),
                                  (lambda: run(base, args.size, args.steps, "latent"),
                                   lambda: run(pipe, args.size, args.steps, "latent")), args.warmup, args.repeats)
            per_round = np.asarray(p["times"]) / np.asarray(b["times"])
            q25, q75 = np.percentile(per_round, [25, 75])
            rows[name] = {"latency_ratio": p["median"] / b["median"], "latency_ratio_iqr": float(q75 - q25),
                          "seconds_base": b["median"], "seconds": p["median"], "blocks_computed": computed, **fidelity}
            pipe = counter = None  # one arm's pipeline beside the base's on the device at a time
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            print(f"{name:22s} latency ratio {rows[name]['latency_ratio']:.3f} (IQR {q75 - q25:.3f})  blocks computed "
                  f"{computed:.2f}  " + "  ".join(f"{k} {v:.4g}" for k, v in fidelity.items()), flush=True)

    cols = ["psnr", "ssim"] + (["lpips"] if lpips else [])
    print("\n| arm | latency ratio to base (IQR) | blocks computed | " + " | ".join(
        f"{c.upper()} vs base | {c.upper()} vs pruned" for c in cols) + " |")
    print("|---|---|---|" + "---|---|" * len(cols))
    for name, r in rows.items():
        cells = " | ".join(f"{r[c]:.3g} | " + (f"{r[c + '_vs_pruned']:.3g}" if c + "_vs_pruned" in r else "—") for c in cols)
        print(f"| {name} | {r['latency_ratio']:.3f} ({r['latency_ratio_iqr']:.3f}) | {r['blocks_computed']:.2f} | {cells} |")
    report("stacking", {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                        "blocks": n_blocks, "prompts": PROMPTS, "arms": rows})


if __name__ == "__main__":
    main()
