"""Stage ablate@<block>: remove one block, generate the importance set, score it → data/ablate/<block>/."""

from pathlib import Path

from fastflux_core.ablation import ablate_block
from fastflux_core.distributed import current_world
from fastflux_core.io import atomic_dir, int_args, run_stage, write_json
from fastflux_core.params import load_params
from fastflux_core.prompts import PromptEmbeds


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
