"""Stage evaluate: base vs pruned on the evaluation prompts → data/metrics/evaluate.json,
data/evaluate/grid.png and data/evaluate/sweep.csv (quality and latency across ratios)."""

from pathlib import Path

from fastflux_core.assemble import load_states
from fastflux_core.evaluation import evaluate
from fastflux_core.io import atomic_dir, atomic_file, run_stage, write_json
from fastflux_core.params import load_params


def main() -> None:
    params = load_params()
    states = load_states(Path("data/state"), len(params.steps))
    with atomic_dir("data/evaluate") as out:
        metrics, sweep = evaluate(params, states, Path("data/assemble/transformer"), out)
    if sweep:
        cols = list(sweep[0])
        with atomic_file("data/plots/sweep.csv") as tmp:
            tmp.write_text("\n".join([",".join(cols)] + [",".join(f"{r[c]:.6g}" for c in cols) for r in sweep]) + "\n")
    write_json("data/metrics/evaluate.json", metrics)


if __name__ == "__main__":
    run_stage(main)
