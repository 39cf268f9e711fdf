"""Stage evaluate: the exported model vs its base on the evaluation prompts → data/metrics/evaluate.json
(quality, FLOPs), data/evaluate/grid.png; latency → data/timing/evaluate.json (not a DVC output)."""

from pathlib import Path

from fastflux_core.evaluation import evaluate
from fastflux_core.io import atomic_dir, run_stage, write_json, write_timing
from fastflux_core.params import load_params
from fastflux_core.prompts import PromptEmbeds


def main() -> None:
    params = load_params()
    embeds = PromptEmbeds.load("data/encoded/evaluation.safetensors")
    with atomic_dir("data/evaluate") as out:
        metrics, latency = evaluate(params, embeds, Path("data/reference/evaluation"),
                                    Path("data/assemble/transformer"), out)
    write_json("data/metrics/evaluate.json", metrics)
    write_timing(latency)


if __name__ == "__main__":
    run_stage(main)
