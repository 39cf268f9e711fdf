"""Images for GenEval and DPG-Bench, laid out as their official evaluators read them.

Peers report GenEval (object detection on short compositional prompts) and DPG-Bench (a VQA model on
dense prompts). Their evaluators need detectors and VLMs we cannot run here, so this command does the
part that is ours: it generates with the pipeline a user ships — an exported pruned model
(``data/export``) or any diffusers pipeline folder, e.g. the base, for the comparison — and writes
what the evaluator reads:

* ``geneval``: the prompts are GenEval's ``prompts/evaluation_metadata.jsonl`` (one JSON object a
  line, with ``prompt``); for line i, ``<out>/<i:05d>/metadata.jsonl`` (that line's object) and
  ``<out>/<i:05d>/samples/<k:04d>.png`` for k < ``--images``. Then, in GenEval's repository:
  ``python evaluation/evaluate_images.py <out> --outfile results.jsonl --model-path <detector>``.
* ``dpg``: the prompts are DPG-Bench's ``dpg_bench/prompts/`` folder (``<id>.txt``, one prompt each);
  ``<out>/<id>.png`` is a 2 × 2 grid of 4 images of ``--size`` pixels, as ELLA's
  ``compute_dpg_bench.py --resolution <size> --pic-num 4`` crops it.

Image k of prompt i is drawn from seed :func:`~fastflux_core.prompts.derive_seed` (``--seed``, "geneval" or
"dpg", i, k), so two models compared this way start from the same noise. Outputs are written
atomically (``<out>`` appears whole or not at all).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastflux_core.errors import FastFluxError
from fastflux_core.io import atomic_dir, image_grid, save_png
from fastflux_core.prompts import derive_seed

# (prompt, seeds) → one (H, W, 3) uint8 image per seed
Generate = Callable[[str, list[int]], list[np.ndarray]]


def geneval_prompts(path: Path) -> list[dict]:
    """GenEval's metadata lines, in file order."""
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastFluxError(f"{path}: not GenEval's evaluation_metadata.jsonl ({err})") from None
    if not lines or not all(isinstance(m, dict) and isinstance(m.get("prompt"), str) for m in lines):
        raise FastFluxError(f"{path}: every line must be a JSON object with a prompt (GenEval's evaluation_metadata.jsonl)")
    return lines


def dpg_prompts(folder: Path) -> dict[str, str]:
    """DPG-Bench's prompts: {id: prompt} from ``<id>.txt`` files, by id."""
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if not files:
        raise FastFluxError(f"{folder}: no <id>.txt prompt files (DPG-Bench's dpg_bench/prompts folder)")
    return {f.stem: " ".join(f.read_text(encoding="utf-8").split()) for f in files}


def write_geneval(metadata: list[dict], generate: Generate, images: int, seed: int, out: Path) -> None:
    with atomic_dir(out) as tmp:
        for i, meta in enumerate(metadata):
            folder = tmp / f"{i:05d}"
            (folder / "samples").mkdir(parents=True)
            (folder / "metadata.jsonl").write_text(json.dumps(meta))
            seeds = [derive_seed(seed, "geneval", i, k) for k in range(images)]
            for k, img in enumerate(generate(meta["prompt"], seeds)):
                save_png(folder / "samples" / f"{k:04d}.png", img)


def write_dpg(prompts: dict[str, str], generate: Generate, seed: int, out: Path) -> None:
    with atomic_dir(out) as tmp:
        for i, (pid, prompt) in enumerate(prompts.items()):
            imgs = generate(prompt, [derive_seed(seed, "dpg", i, k) for k in range(4)])
            save_png(tmp / f"{pid}.png", image_grid(np.stack(imgs), cols=2))  # (2·size, 2·size, 3)


def pipeline_generator(folder: Path, size: int, steps: int, guidance_scale: float, device: str,
                       dtype: str = "bfloat16") -> Generate:
    """A pipeline folder's own sampling, its weights in ``dtype``: an export of ours through
    :func:`~fastflux_core.export_folder.load_pipeline`, any other diffusers folder as it is."""
    import torch
    from diffusers import DiffusionPipeline

    from fastflux_core.export_folder import MODULE, load_pipeline

    index = folder / "model_index.json"
    if not folder.is_dir():
        raise FastFluxError(f"{folder}: no such folder: pass --model <a diffusers pipeline folder>, or run "
                            f"stage export (dvc repro export) for the default data/export")
    if not index.is_file() and (folder / "transformer" / "config.json").is_file():
        raise FastFluxError(f"{folder}: an export of the embedded default (a transformer and a scheduler, no text "
                            f"encoder or VAE: not a pipeline that takes a prompt); these suites need an export of a "
                            f"model folder (model.source: flux, flux2 or sd3) or the base's own folder")
    if not index.is_file():
        raise FastFluxError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    ours = json.loads(index.read_text()).get("transformer", [None])[0] == MODULE
    kwargs = {"dtype": getattr(torch, dtype)}
    pipe = (load_pipeline(folder, **kwargs) if ours else DiffusionPipeline.from_pretrained(str(folder), **kwargs))
    pipe = pipe.to(device)

    def generate(prompt: str, seeds: list[int]) -> list[np.ndarray]:
        out = []
        for s in seeds:  # one image per seed: image k does not depend on how many are made
            img = pipe(prompt=prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=torch.Generator("cpu").manual_seed(s), output_type="np").images[0]
            out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
        return out

    return generate


def main(argv: list[str] | None = None, prog: str = "python -m fastflux_core.benchmark_images") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", choices=["geneval", "dpg"])
    ap.add_argument("--model", type=Path, default=Path("data/export"), help="pipeline folder (default: the export)")
    ap.add_argument("--prompts", type=Path, required=True,
                    help="GenEval: evaluation_metadata.jsonl; DPG-Bench: the dpg_bench/prompts folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=4, help="GenEval: images per prompt (DPG-Bench: always 4)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--guidance-scale", type=float, default=3.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                    help="the weights' dtype (FLUX.1-dev's transformer is 22 GiB in bfloat16, twice that in float32)")
    args = ap.parse_args(argv)
    if args.images < 1 or args.steps < 1:
        ap.error("--images and --steps must be at least 1")
    if args.size < 16 or args.size % 16:
        ap.error(f"--size {args.size}: must be a multiple of 16 of at least 16 (FLUX's latent is 1/8 of the image, "
                 f"packed in 2 x 2 patches)")
    prompts = geneval_prompts(args.prompts) if args.suite == "geneval" else dpg_prompts(args.prompts)
    generate = pipeline_generator(args.model, args.size, args.steps, args.guidance_scale, args.device, args.dtype)
    if args.suite == "geneval":
        write_geneval(prompts, generate, args.images, args.seed, args.out)
    else:
        write_dpg(prompts, generate, args.seed, args.out)
    print(f"wrote {len(prompts)} prompts' images to {args.out}/")


if __name__ == "__main__":
    from fastflux_core.cli import run_command

    run_command(main)
