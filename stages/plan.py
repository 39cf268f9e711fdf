"""Stage plan: the ranking's first n(max_ratio) blocks → one file per pruning step (data/plan/<k>.json),
and the empty chain state the first step starts from (data/state/0)."""

from pathlib import Path

from fastflux_core.chain import ChainState, make_plan, write_plan
from fastflux_core.io import atomic_dir, read_json
from fastflux_core.layouts import model_blocks
from fastflux_core.preflight import load_params
from fastflux_core.stage import run_stage


def main() -> None:
    params = load_params()
    blocks = model_blocks(params.model)
    order = read_json(Path("data/rank/ranking.json"))["order"]
    steps = make_plan(order, len(params.steps), len(blocks), params.sandwich.width)
    with atomic_dir("data/plan") as out:
        write_plan(steps, blocks, out)
    with atomic_dir("data/state/0") as out:
        ChainState(step=0).save(out)


if __name__ == "__main__":
    run_stage(main, deterministic=False)  # it runs no torch kernels
