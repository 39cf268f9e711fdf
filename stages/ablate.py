"""Stage ablate@<block>: remove one block, generate the importance set, score it → data/ablate/<block>/."""

from pathlib import Path

from fastflux_core.ablation import ablate_block
from fastflux_core.io import atomic_dir, write_json
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.stage import current_world, int_args, run_stage


def main() -> None:
    (index,) = int_args("block")
    params = load_params()
    world = current_world(params.model.device)
    embeds = PromptEmbeds.load("data/encoded/importance.safetensors")
    with atomic_dir(f"data/ablate/{index}", world) as out:
        record = ablate_block(params, index, embeds, Path("data/reference/importance"), out, world)
        if world.is_main:
            write_json(out / "metrics.json", record)


if __name__ == "__main__":
    run_stage(main)
