"""Stage ablate@<block>: remove one block, generate the importance set, score it → data/ablate/<block>/."""

from pathlib import Path

from fastflux_core.ablation import ablate_block
from fastflux_core.io import atomic_dir, int_args, run_stage, write_json
from fastflux_core.params import load_params
from fastflux_core.prompts import PromptEmbeds


def main() -> None:
    (index,) = int_args("block")
    params = load_params()
    embeds = PromptEmbeds.load("data/encoded/importance.safetensors")
    with atomic_dir(f"data/ablate/{index}") as out:
        write_json(out / "metrics.json", ablate_block(params, index, embeds, Path("data/reference/importance"), out))


if __name__ == "__main__":
    run_stage(main)
