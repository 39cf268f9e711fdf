"""Stage reference: the full model's images for the importance prompt set → data/reference/.

Every ablation is scored against these (FID, latent error), and against real images if configured.
"""

from fastflux_core.ablation import make_reference
from fastflux_core.io import atomic_dir, run_stage, write_json
from fastflux_core.params import load_params
from fastflux_core.prompts import PromptEmbeds

OUT = "data/reference"


def main() -> None:
    params = load_params()
    embeds = PromptEmbeds.load("data/encoded/importance.safetensors")
    with atomic_dir(OUT) as out:
        write_json(out / "metrics.json", make_reference(params, embeds, out))


if __name__ == "__main__":
    run_stage(main)
