"""Stage capture@k: the model after steps < k runs the calibration and training prompts →
data/capture/<k>/calibration.zarr (least-squares data) and training.zarr (transformer inputs for Sandwich Training)."""

from pathlib import Path

from fastflux_core.capture import capture_step
from fastflux_core.chain import ChainState, PlanStep
from fastflux_core.io import atomic_dir, read_json, write_json
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.stage import current_world, int_args, run_stage


def main() -> None:
    k, prev = int_args("k", "prev")
    params = load_params()
    world = current_world(params.model.device)
    step = PlanStep.load(Path(f"data/plan/{k}.json"))
    name = read_json(Path(f"data/plan/{k}.json"))["name"]
    state = ChainState.load(Path(f"data/state/{prev}"))
    calibration = PromptEmbeds.load("data/encoded/calibration.safetensors")
    training = PromptEmbeds.load("data/encoded/training.safetensors")
    with atomic_dir(f"data/capture/{k}", world) as out:
        info = capture_step(params, step, state, calibration, training, name, out, world)
        if world.is_main:
            write_json(out / "info.json", info)


if __name__ == "__main__":
    run_stage(main)
