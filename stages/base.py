"""Stage base: the model to prune → data/base/ and metrics in data/metrics/base.json.

Embedded default: train the small transformer (FLUX, FLUX.2, SD3 or Qwen-Image: embedded.family) on digits (and the digit
judge), then measure how often its samples show the prompted digit (its own captions: it reads no prompt
set). A model folder: check it and record it.
"""

from fastflux_core.embedded import make_embedded_base
from fastflux_core.io import atomic_dir, write_json
from fastflux_core.preflight import load_params
from fastflux_core.source import EMBEDDED_BASE, describe_folder_base
from fastflux_core.stage import run_stage

METRICS = "data/metrics/base.json"


def main() -> None:
    params = load_params()
    with atomic_dir(EMBEDDED_BASE) as out:
        if params.model.source != "embedded":
            metrics = describe_folder_base(params.model)
        else:
            metrics = {"source": "embedded", **make_embedded_base(params, out)}
        write_json(out / "source.json", metrics)
    write_json(METRICS, metrics)


if __name__ == "__main__":
    run_stage(main)
