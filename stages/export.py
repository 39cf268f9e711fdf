"""Stage export: data/export/ — the pruned pipeline folder (FluxPipeline.from_pretrained loads it), its
model card README.md and block map, from data/assemble and the evaluate stage's measurements.

The folder holds links, not copies: transformer/ → data/assemble/transformer (with export.numbering:
contiguous, a renumbered copy), every other component → the base folder's (dvc.yaml declares it
cache: false, and DVC does not follow links into folders). README.md quotes the measured latency, so
.dvcignore keeps it out of DVC's hash, as every timing is, and the stage runs on every repro.
"""

from pathlib import Path

from fastflux_core.export_folder import contiguous_map, write_pipeline
from fastflux_core.io import atomic_dir, read_json, write_json
from fastflux_core.model_card import model_card
from fastflux_core.params_file import read_params
from fastflux_core.stage import run_stage


def main() -> None:
    export = read_params().export  # the schema checks this section whole; the run's setup was checked by validate
    metrics = read_json("data/metrics/evaluate.json")
    block_map = {**read_json("data/assemble/pruning.json"), "numbering": export.numbering, "metrics": metrics}
    latency = read_json("data/timing/evaluate.json")
    if export.numbering == "contiguous":
        block_map["contiguous_index"] = contiguous_map(Path("data/assemble/transformer"))
    with atomic_dir("data/export") as out:
        write_pipeline(Path("data/assemble/transformer"), Path(block_map["base"]["path"]), out, final=Path("data/export"),
                       numbering=export.numbering)
        write_json(out / "block_map.json", block_map)
        (out / "README.md").write_text(model_card(block_map, metrics, latency, (out / "model_index.json").is_file()))


if __name__ == "__main__":
    run_stage(main, deterministic=False)
