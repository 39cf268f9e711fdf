"""Stage evaluate: the exported model vs its base on the evaluation prompts → data/metrics/evaluate.json
(quality, FLOPs), data/evaluate/grid.png; latency → data/timing/evaluate.json (not a DVC output)."""

from pathlib import Path

from fastflux_core.evaluation import evaluate
from fastflux_core.io import atomic_dir, write_json, write_timing
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.stage import current_world, run_stage


def main() -> None:
    params = load_params()
    world = current_world(params.model.device)
    embeds = PromptEmbeds.load("data/encoded/evaluation.safetensors")
    with atomic_dir("data/evaluate", world) as out:
        result = evaluate(params, embeds, Path("data/reference/evaluation"), Path("data/assemble/transformer"), out, world)
    if world.is_main:
        metrics, latency = result
        write_json("data/metrics/evaluate.json", metrics)
        write_timing(latency)


if __name__ == "__main__":
    run_stage(main)
