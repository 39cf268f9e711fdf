"""The GPU check's CPU path (issue 32, 3): every stage kind's prediction at FLUX.1-dev's shapes runs
without a GPU or weights and is written with no measurement beside it; on a GPU the same script
measures (scripts/gpu_check.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cpu_path_predicts_every_stage_kind_and_measures_nothing(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    monkeypatch.chdir(tmp_path)  # benchmarks/results/ goes here
    gpu_check.main(["--device", "cpu", "--params", str(ROOT / "examples" / "flux1-dev" / "params.yaml")])
    out = json.loads((tmp_path / "benchmarks" / "results" / "gpu_check.json").read_text())
    assert set(out["cases"]) == {"encode", "sampling (resident)", "sampling (offloaded)", "capture (offloaded)",
                                 "solve", "sandwich (double)", "sandwich (single)", "finisher step"}
    rows = out["cases"]
    assert all(r["predicted_GiB"] > 0 and r["measured_GiB"] is None for r in rows.values())
    # FLUX.1-dev's bf16 transformer alone is 22.2 GiB (23.8 GB): resident sampling holds it, offloaded far less
    assert 22 < rows["sampling (resident)"]["predicted_GiB"] < 30 and rows["sampling (offloaded)"]["predicted_GiB"] < 6
