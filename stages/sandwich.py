"""Stage sandwich@k: train step k's sandwich on the captured inputs (recomputing its boundary states)
→ the chain state after step k (data/state/<k>)."""

from pathlib import Path

from fastflux_core.chain import ChainState, PlanStep, load_conditioning, load_solution
from fastflux_core.io import atomic_dir, write_json
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.sandwich import train_sandwich
from fastflux_core.stage import current_world, int_args, run_stage
from fastflux_core.store import StoreReader


def main() -> None:
    k, prev = int_args("k", "prev")
    params = load_params()
    world = current_world(params.model.device)
    step = PlanStep.load(Path(f"data/plan/{k}.json"))
    solution = Path(f"data/solve/{k}/linear.safetensors")
    store = StoreReader(Path(f"data/capture/{k}/training.zarr"))
    store.verify()  # a damaged shard stops the stage before training, not when a late round reads it
    state, record = train_sandwich(params, step, ChainState.load(Path(f"data/state/{prev}")), load_solution(solution),
                                   store,
                                   PromptEmbeds.load("data/encoded/training.safetensors"), world,
                                   load_conditioning(solution))
    if not world.is_main:  # DDP kept every rank's weights equal: rank 0 writes them
        return
    with atomic_dir(f"data/state/{k}") as out:
        state.save(out)
    write_json(f"data/metrics/sandwich/{k}.json", record)


if __name__ == "__main__":
    run_stage(main)
