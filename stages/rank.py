"""Stage rank: Eq. 2 over all ablations → data/rank/ranking.json (+ plot data), data/metrics/rank.json."""

from dataclasses import asdict
from pathlib import Path

from fastflux_core.importance import load_records, rank, write_ranking
from fastflux_core.io import write_json
from fastflux_core.layouts import model_blocks
from fastflux_core.preflight import load_params
from fastflux_core.stage import run_stage


def main() -> None:
    params = load_params()
    blocks = [{**asdict(b), "name": b.name} for b in model_blocks(params.model)]
    ranking = rank(load_records(Path("data/ablate")), blocks, params.importance)
    write_ranking(ranking, Path("data/rank"))
    write_json("data/metrics/rank.json", {k: ranking[k] for k in ("method", "order_kind", "spearman_proxy") if k in ranking})


if __name__ == "__main__":
    run_stage(main, deterministic=False)  # it runs no torch kernels
