"""What each importance ranking costs, and how well the cheap ones agree with Eq. 2, over seeds.

For each of ``--seeds`` importance seeds (the importance set's noise seeds shifted), on the current
base: Eq. 2 as the paper computes it — every block ablated, FID + alignment on the full importance set
at the full sampling steps — and, for each cheap variant ``IMAGES×STEPS`` of ``--variants``, the
latent-error proxy with IMAGES images per prompt and a STEPS-step schedule (its own reference at the
same steps, as ``importance.steps`` makes it); Spearman correlation of each variant's ranking with
Eq. 2's, mean ± std over seeds.

FLUX.1-dev cost of the recommended variant (``--flux``: IMAGES×STEPS×RESOLUTION for ``--flux-prompts``
prompts): the budget command's counted FLOPs (fake tensors, FLUX.1-dev's config, 57 ablations plus the
reference) at ``--tflops``.

Needs `dvc repro encode base` first. Prints and writes benchmarks/results/importance_cost.json.
Run: python benchmarks/importance_cost.py [--seeds 3] [--variants 2x20,1x20,2x8,1x8,2x5,1x5] [--flux 1x11x1024]
"""

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml
from common import report

from fastflux_core.ablation import ablate_block
from fastflux_core.importance import rank, spearman
from fastflux_core.layouts import model_blocks
from fastflux_core.params_file import parse_params
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.reference import make_reference

SEED_STRIDE = 100_000  # importance seeds of run s: seed + s·stride, far from every other set's seeds


def with_importance(params, seed_shift: int, **importance):
    s = params.prompts.importance.model_copy(update={"seed": params.prompts.importance.seed + seed_shift})
    return params.model_copy(update={"prompts": params.prompts.model_copy(update={"importance": s}),
                                     "importance": params.importance.model_copy(update=importance)})


def ranking(params, embeds: PromptEmbeds, blocks: list[dict], tmp: Path, tag: str) -> tuple[list[float], float, int]:
    """(score per block, seconds, images per block) of ``params``'s importance method, reference included."""
    t0 = time.perf_counter()
    ref = tmp / f"{tag}-reference"
    ref.mkdir()
    make_reference(params, "importance", embeds, ref)
    records = []
    for b in blocks:
        out = tmp / f"{tag}-{b['index']}"
        out.mkdir()
        records.append(ablate_block(params, b["index"], embeds, ref, out))
    r = rank(records, blocks, params.importance)
    key = "score" if params.importance.method == "fid_clip" else "proxy_score"
    return [b[key] for b in r["blocks"]], time.perf_counter() - t0, records[0]["images"]


def one_seed(params, embeds: PromptEmbeds, blocks: list[dict], shift: int, variants: list[tuple[int, int]]) -> dict:
    out: dict = {"seed_shift": shift}
    with tempfile.TemporaryDirectory() as tmp:
        eq2, sec, n = ranking(with_importance(params, shift, method="fid_clip", steps=None), embeds, blocks,
                              Path(tmp), "eq2")
        out["eq2"] = {"seconds": round(sec, 2), "images_per_block": n, "steps": params.sampling.steps}
        for images, steps in variants:
            p = with_importance(params, shift, method="proxy", proxy_images_per_prompt=images, steps=steps)
            score, sec, n = ranking(p, embeds, blocks, Path(tmp), f"proxy{images}x{steps}")
            out[f"proxy {images}x{steps}"] = {"spearman_vs_eq2": spearman(score, eq2), "seconds": round(sec, 2),
                                             "images_per_block": n, "steps": steps}
    return out


def flux_cost(images: int, steps: int, resolution: int, prompts: int, tflops: float) -> dict:
    """Counted FLOPs (budget command, fake tensors) of proxy importance on FLUX.1-dev."""
    from fastflux_core.budget import plan_budget

    d = yaml.safe_load(Path("params.yaml").read_text())
    d["model"].update(source="flux", path="/nonexistent/FLUX.1-dev", dtype="bfloat16", device="cuda")
    d["text"].update(max_sequence_length=512, batch_size=8)
    d["sampling"].update(height=1024, width=1024, steps=28, batch_size=4)
    d["prompts"]["importance"].update(file="/nonexistent/importance.txt", images_per_prompt=images)
    d["importance"].update(blocks=list(range(57)), method="proxy", proxy_images_per_prompt=images, steps=steps,
                           height=resolution, width=resolution)
    d["metrics"].update(fid_features="inception", alignment="clip", real_images=None,
                        inception_path="/nonexistent/inception", clip_path="/nonexistent/clip")
    d["max_ratio"], d["ratio"] = 0.2, 0.2
    d["steps"] = {str(k): {"prev": k - 1} for k in range(1, 12)}
    assumed = {"calibration": 512, "training": 512, "importance": prompts, "evaluation": 512}
    rows, summary = plan_budget(parse_params(d), 22.0, tflops, assumed)
    imp = {r.stage: {"tflop": r.tflop, "hours": r.hours} for r in rows if r.stage in ("reference@importance", "ablate@j")}
    return {"images_per_prompt": images, "prompts": prompts, "steps": steps, "resolution": resolution,
            "tflops_per_s": tflops, **imp, "hours": summary["importance_hours"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default="2x20,1x20,2x8,1x8,2x5,1x5", help="IMAGESxSTEPS of the proxy, comma-separated")
    ap.add_argument("--flux", default="1x11x1024", help="IMAGESxSTEPSxRESOLUTION of the proxy on FLUX.1-dev")
    ap.add_argument("--flux-prompts", type=int, default=24)
    ap.add_argument("--tflops", type=float, default=400.0, help="sustained bf16 TFLOP/s assumed for one H100")
    args = ap.parse_args()
    params = load_params()
    embeds = PromptEmbeds.load("data/encoded/importance.safetensors")
    blocks = [{**asdict(b), "name": b.name} for b in model_blocks(params.model)]
    variants = [tuple(int(x) for x in v.split("x")) for v in args.variants.split(",")]
    runs = [one_seed(params, embeds, blocks, s * SEED_STRIDE, variants) for s in range(args.seeds)]
    summary = {}
    for images, steps in variants:
        rho = np.array([r[f"proxy {images}x{steps}"]["spearman_vs_eq2"] for r in runs])
        summary[f"proxy {images}x{steps}"] = {"spearman_mean": float(rho.mean()),
                                              "spearman_std": float(rho.std(ddof=1)) if len(rho) > 1 else None}
    fi, fs, fr = (int(x) for x in args.flux.split("x"))
    report("importance_cost", {"seeds": args.seeds, "eq2_steps": params.sampling.steps, "summary": summary,
                               "runs": runs, "flux_proxy": flux_cost(fi, fs, fr, args.flux_prompts, args.tflops)})


if __name__ == "__main__":
    main()
