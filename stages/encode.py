"""Stage encode: every prompt set → data/encoded/<set>.safetensors (text states + pooled vectors; with
classifier-free guidance the negative prompt's too).

Text encoders live only in this stage, so later stages generate without them in memory. A prompt
the encoder cuts at text.max_sequence_length is named first (refused where the cut loses the digit
an embedded default's prompt names).
"""

from fastflux_core.io import atomic_dir
from fastflux_core.preflight import load_params
from fastflux_core.prompts import SETS, read_prompt_file
from fastflux_core.source import resolve_dtype
from fastflux_core.stage import run_stage
from fastflux_core.text import check_cut, encode_prompts, load_text_encoder

OUT = "data/encoded"


def main() -> None:
    params = load_params()
    sets = {name: read_prompt_file(getattr(params.prompts, name).file) for name in SETS}
    encoder = load_text_encoder(params.model, params.text)
    for name, prompts in sets.items():  # every set before any is encoded
        check_cut(encoder, prompts, getattr(params.prompts, name).file, digits=params.model.source == "embedded")
    with atomic_dir(OUT) as out:
        for name, prompts in sets.items():
            embeds = encode_prompts(encoder, prompts, params.text.batch_size, name, resolve_dtype(params.model.dtype),
                                    params.sampling.negative)
            embeds.save(out / f"{name}.safetensors")


if __name__ == "__main__":
    run_stage(main)
