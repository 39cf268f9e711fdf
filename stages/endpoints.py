"""Stage endpoints: with capture.inputs: noised, the full model's final latent of every calibration and
training item → data/endpoints/<set>.safetensors, from which every capture@k makes its noised inputs;
with trajectory only data/endpoints/info.json, saying nothing was needed."""

from fastflux_core.capture import make_endpoints
from fastflux_core.io import atomic_dir, write_json
from fastflux_core.preflight import load_params
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.stage import current_world, run_stage


def main() -> None:
    params = load_params()
    world = current_world(params.model.device)
    sets = {name: PromptEmbeds.load(f"data/encoded/{name}.safetensors") for name in ("calibration", "training")}
    with atomic_dir("data/endpoints", world) as out:
        record = make_endpoints(params, sets, out, world)
        if world.is_main:
            write_json(out / "info.json", record)


if __name__ == "__main__":
    run_stage(main)
