"""Stage validate: params.yaml and the setup it describes (prompt files, model folder, device, image
size, metrics) and FASTFLUX_LAUNCH, checked on every `dvc repro` / `dvc exp run` — dvc.yaml marks it always_changed — so
a typo or an inconsistent chain is reported even when no other stage would run; then the run's
budget: disk for the activation stores and, on a GPU, device memory of every stage."""

from fastflux_core.preflight import load_params
from fastflux_core.resources import check_resources
from fastflux_core.stage import check_launcher, run_stage, stage_args


def main() -> None:
    stage_args()
    check_launcher()
    check_resources(load_params())


if __name__ == "__main__":
    run_stage(main, deterministic=False)
