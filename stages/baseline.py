"""Stage baseline: the paper's L1-norm width-pruning baseline at each of baseline.ratios, FLOPs-matched
to our model there and fine-tuned with the sandwiches' budget → data/baseline (grids),
data/metrics/baseline.json (quality and FLOPs of both, what `dvc exp show` reports); latency →
data/timing/baseline.json (not a DVC output). With no ratios it writes empty records."""

from pathlib import Path

from fastflux_core.io import atomic_dir, write_json, write_timing
from fastflux_core.preflight import load_params
from fastflux_core.stage import run_stage


def main() -> None:
    params = load_params()
    metrics, timings = {}, {}
    with atomic_dir("data/baseline") as out:
        if params.baseline.ratios:
            # imported only when on: the baseline's code imports diffusers and peft (~6 s a process);
            # with no ratios, as in most of the report's runs, the stage writes its empty records without them
            from fastflux_core.assemble import load_states
            from fastflux_core.prompts import PromptEmbeds
            from fastflux_core.store import StoreReader
            from fastflux_core.width import baseline

            metrics, timings = baseline(params, load_states(Path("data/state"), len(params.steps)),
                                        StoreReader(Path("data/capture/1/training.zarr")),
                                        PromptEmbeds.load("data/encoded/training.safetensors"),
                                        PromptEmbeds.load("data/encoded/evaluation.safetensors"),
                                        Path("data/reference/evaluation"), out)
    write_json("data/metrics/baseline.json", metrics)
    write_timing(timings)


if __name__ == "__main__":
    run_stage(main)
