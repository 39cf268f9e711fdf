"""Stage assemble: the pruned transformer for `ratio` → data/assemble/transformer (diffusers format)
and data/assemble/pruning.json (replaced blocks, parameter counts, ratio → n)."""

from pathlib import Path

from fastflux_core.assemble import assemble, load_states
from fastflux_core.io import atomic_dir, run_stage, write_json
from fastflux_core.params import load_params


def main() -> None:
    params = load_params()
    states = load_states(Path("data/state"), len(params.steps))
    with atomic_dir("data/assemble") as out:
        write_json(out / "pruning.json", assemble(params, states, len(params.importance.blocks), out))


if __name__ == "__main__":
    run_stage(main)
