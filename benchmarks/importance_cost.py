"""What each importance ranking costs, and how well the cheap one agrees with Eq. 2, over seeds.

For each of ``--seeds`` importance seeds (the importance set's noise seeds shifted), on the current
base: the full model's reference images, then every block ablated with Eq. 2 (FID + alignment on the
full importance set) and with the latent-error proxy (``importance.proxy_images_per_prompt`` images
per prompt); Spearman correlation of the proxy's ranking with Eq. 2's, reported as mean ± std.
Also what the proxy would cost on FLUX.1-dev (57 blocks at 1024², counted block FLOPs) at a stated
TFLOP/s, for ``--flux-images`` images of ``--flux-steps`` steps.

Needs `dvc repro encode base` first. Prints and writes benchmarks/results/importance_cost.json.
Run: python benchmarks/importance_cost.py [--seeds 3] [--flux-images 20] [--flux-steps 28] [--tflops 400]
"""

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from common import report

from fastflux_core.ablation import ablate_block, make_reference
from fastflux_core.importance import rank, spearman
from fastflux_core.params import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.source import model_blocks
from fastflux_core.speed import block_flops

SEED_STRIDE = 100_000  # importance seeds of run s: seed + s·stride, far from every other set's seeds


def one_seed(params, embeds: PromptEmbeds, blocks: list[dict], shift: int) -> dict:
    importance = params.prompts.importance.model_copy(update={"seed": params.prompts.importance.seed + shift})
    p = params.model_copy(update={"prompts": params.prompts.model_copy(update={"importance": importance})})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        ref.mkdir()
        make_reference(p, "importance", embeds, ref)
        for method in ("fid_clip", "proxy"):
            cfg = p.importance.model_copy(update={"method": method})
            q = p.model_copy(update={"importance": cfg})
            t0 = time.perf_counter()
            records = []
            for b in blocks:
                (Path(tmp) / f"{method}-{b['index']}").mkdir()
                records.append(ablate_block(q, b["index"], embeds, ref, Path(tmp) / f"{method}-{b['index']}"))
            ranking = rank(records, blocks, cfg)
            out[method] = {"seconds": round(time.perf_counter() - t0, 2), "images_per_block": records[0]["images"],
                           "order": ranking["order"], "blocks": ranking["blocks"]}
    eq2 = [b["score"] for b in out["fid_clip"]["blocks"]]
    proxy = [b["proxy_score"] for b in out["proxy"]["blocks"]]
    return {"seed_shift": shift, "spearman_proxy_vs_eq2": spearman(proxy, eq2),
            **{m: {k: v for k, v in r.items() if k != "blocks"} for m, r in out.items()}}


def flux_cost(images: int, steps: int, tflops: float) -> dict:
    """Proxy importance on FLUX.1-dev: the reference plus 57 ablations, each ``images`` × ``steps``
    forwards of 56 or 57 blocks (every block ≈ 1.305 TFLOPs at 1024²; embedders and the final layer
    are < 1 % and left out)."""
    per_block = block_flops("double", 3072, 4096, 512)  # a single block costs the same within 0.1 %
    forwards = images * steps
    total = forwards * per_block * (57 + 57 * 56)
    return {"images": images, "steps": steps, "tflops_per_s": tflops, "pflops": total / 1e15,
            "hours": total / (tflops * 1e12) / 3600}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--flux-images", type=int, default=20)
    ap.add_argument("--flux-steps", type=int, default=28)
    ap.add_argument("--tflops", type=float, default=400.0, help="sustained bf16 TFLOP/s assumed for one H100")
    args = ap.parse_args()
    params = load_params()
    embeds = PromptEmbeds.load("data/encoded/importance.safetensors")
    blocks = [{**asdict(b), "name": b.name} for b in model_blocks(params)]
    runs = [one_seed(params, embeds, blocks, s * SEED_STRIDE) for s in range(args.seeds)]
    rho = np.array([r["spearman_proxy_vs_eq2"] for r in runs])
    report("importance_cost", {
        "proxy_images_per_prompt": params.importance.proxy_images_per_prompt, "seeds": args.seeds,
        "spearman_mean": float(rho.mean()), "spearman_std": float(rho.std(ddof=1)) if len(rho) > 1 else None,
        "runs": runs, "flux_proxy": flux_cost(args.flux_images, args.flux_steps, args.tflops),
    })


if __name__ == "__main__":
    main()
