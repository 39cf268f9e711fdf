"""Stage reference@<set>: the full model's images for a prompt set (importance or evaluation) →
data/reference/<set>/. Ablations and pruned models are scored against them with the same seeds."""

from fastflux_core.errors import FastFluxError
from fastflux_core.io import atomic_dir, write_json
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.reference import make_reference
from fastflux_core.stage import current_world, run_stage, stage_args


def main() -> None:
    (set_name,) = stage_args("prompt set")
    if set_name not in ("importance", "evaluation"):
        raise FastFluxError(f"reference images are made for the importance or evaluation set, not {set_name!r}")
    params = load_params()
    world = current_world(params.model.device)
    embeds = PromptEmbeds.load(f"data/encoded/{set_name}.safetensors")
    with atomic_dir(f"data/reference/{set_name}", world) as out:
        record = make_reference(params, set_name, embeds, out, world)
        if world.is_main:
            write_json(out / "metrics.json", record)


if __name__ == "__main__":
    run_stage(main)
