"""Stage sweep: every chain length 0..K (or those of evaluate.sweep_lengths; on the first evaluate.sweep_items
items) vs the base on the evaluation prompts → data/plots/sweep.csv and data/metrics/sweep.json (quality,
FLOPs ratio; the JSON is what `dvc exp show` reports), and data/timing/sweep.csv / sweep.json (latency ratio; not DVC outputs). Independent of `ratio`, so
`dvc exp run -S ratio=…` does not re-run it. With evaluate.sweep false it writes the header only."""

from pathlib import Path

from fastflux_core.io import TIMING, write_csv, write_json, write_timing
from fastflux_core.preflight import load_params
from fastflux_core.stage import current_world, run_stage

COLUMNS = ["n_pruned", "ratio", "fid", "fid_real", "clip", "prompt_accuracy", "flops_ratio"]


def main() -> None:
    params = load_params()
    world = current_world(params.model.device)
    rows, timings = [], []
    if params.evaluate.sweep:
        # imported only when on: the sweep's code imports diffusers and peft (~6 s a process); with the
        # sweep off, as in most of the report's runs, the stage writes its empty records without them
        from fastflux_core.assemble import load_states
        from fastflux_core.prompts import PromptEmbeds
        from fastflux_core.sweep import sweep

        states = load_states(Path("data/state"), len(params.steps))
        embeds = PromptEmbeds.load("data/encoded/evaluation.safetensors")
        result = sweep(params, states, embeds, Path("data/reference/evaluation"), world)
        if result is None:  # not the main rank: its share of the images is with rank 0
            return
        rows, timings = result
    write_csv("data/plots/sweep.csv", [c for c in COLUMNS if not rows or c in rows[0]], rows)
    write_json("data/metrics/sweep.json", {f"n{r['n_pruned']}": r for r in rows})
    write_csv(TIMING / "sweep.csv", ["n_pruned", "latency_ratio", "latency_ratio_iqr"], timings)
    write_timing({f"n{t['n_pruned']}": t for t in timings})


if __name__ == "__main__":
    run_stage(main)
