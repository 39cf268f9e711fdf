"""What each importance ranking costs on the current base: Eq. 2 (FID + alignment on the full
importance set) vs the latent-error proxy (importance.proxy_images_per_prompt images per prompt).

Needs `dvc repro reference@importance` first. Prints and writes benchmarks/results/importance_cost.json.
Run: python benchmarks/importance_cost.py
"""

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common import report

from fastflux_core.ablation import ablate_block
from fastflux_core.importance import rank
from fastflux_core.params import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.source import model_blocks


def main() -> None:
    params = load_params()
    embeds = PromptEmbeds.load("data/encoded/importance.safetensors")
    blocks = [{**asdict(b), "name": b.name} for b in model_blocks(params)]
    result = {}
    for method in ("fid_clip", "proxy"):
        cfg = params.importance.model_copy(update={"method": method})
        p = params.model_copy(update={"importance": cfg})
        t0 = time.perf_counter()
        records = []
        for b in blocks:
            with tempfile.TemporaryDirectory() as tmp:
                records.append(ablate_block(p, b["index"], embeds, Path("data/reference/importance"), Path(tmp)))
        seconds = time.perf_counter() - t0
        result[method] = {"seconds_all_blocks": round(seconds, 2), "blocks": len(blocks),
                          "images_per_block": records[0]["images"], "order": rank(records, blocks, cfg)["order"]}
    report("importance_cost", result)


if __name__ == "__main__":
    main()
