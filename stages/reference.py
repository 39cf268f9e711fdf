"""Stage reference@<set>: the full model's images for a prompt set (importance or evaluation) →
data/reference/<set>/. Ablations and pruned models are scored against them with the same seeds."""

from fastflux_core.ablation import make_reference
from fastflux_core.distributed import current_world
from fastflux_core.errors import FastFluxError
from fastflux_core.io import atomic_dir, run_stage, stage_args, write_json
from fastflux_core.params import load_params
from fastflux_core.prompts import PromptEmbeds


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
