"""Stage solve@k: streamed least squares over data/capture/<k> → data/solve/<k>/linear.safetensors (W, b;
with solve.condition: temb also U), with relative residual and condition number in data/metrics/solve/<k>.json."""

from pathlib import Path

from fastflux_core.io import atomic_dir, write_json
from fastflux_core.placement import resolve_device
from fastflux_core.preflight import load_params
from fastflux_core.solve import replacement_for, save_solution
from fastflux_core.stage import current_world, int_args, run_stage
from fastflux_core.store import StoreReader


def main() -> None:
    (k,) = int_args("k")
    params = load_params()
    world = current_world(params.model.device)
    store = StoreReader(Path(f"data/capture/{k}/calibration.zarr"))
    solutions, metrics = replacement_for(store, params.solve, resolve_device(params.model.device), world)
    if not world.is_main:  # every rank holds the same solution: rank 0 writes it
        return
    info = {"step": k, "block": store.attrs["block"], "block_name": store.attrs["block_name"],
            "kind": store.attrs["kind"], "replacement": params.solve.replacement, "condition": params.solve.condition,
            "ridge": params.solve.ridge, "streams": metrics}
    with atomic_dir(f"data/solve/{k}") as out:
        save_solution(out / "linear.safetensors", solutions)
        write_json(out / "info.json", info)
    write_json(f"data/metrics/solve/{k}.json", {
        f"{s}_{m}": v[m] for s, v in metrics.items() for m in ("relative_residual", "relative_residual_plain",
                                                               "condition_number") if m in v})


if __name__ == "__main__":
    run_stage(main)
