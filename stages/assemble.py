"""Stage assemble: the pruned transformer for `ratio` → data/assemble/transformer (diffusers format)
and data/assemble/pruning.json (replaced blocks, parameter counts, ratio → n); with finish.steps the
model is first finished on step 1's training store (the base's own trajectories)."""

from pathlib import Path

from fastflux_core.assemble import assemble, load_states
from fastflux_core.finish import finished_model, finishing_data
from fastflux_core.io import atomic_dir, write_json
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.stage import run_stage
from fastflux_core.store import StoreReader


def main() -> None:
    params = load_params()
    states = load_states(Path("data/state"), len(params.steps))
    training = None
    if params.finish.steps:
        training = finishing_data(params, StoreReader(Path("data/capture/1/training.zarr")),
                                  PromptEmbeds.load("data/encoded/training.safetensors"))
    with atomic_dir("data/assemble") as out:
        write_json(out / "pruning.json", assemble(params, states, len(params.importance.blocks), out,
                                                  lambda p, s, n: finished_model(p, s, n, training)))


if __name__ == "__main__":
    run_stage(main)
