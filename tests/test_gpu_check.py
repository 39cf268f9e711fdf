"""The GPU check's CPU path (issue 32, 3): every stage kind's prediction at FLUX.1-dev's shapes runs
without a GPU or weights and is written with no measurement beside it; on a GPU the same script
measures (scripts/gpu_check.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cpu_path_predicts_and_measures_nothing(tmp_path, monkeypatch):
    """Every stage kind is a case; three of them run here (all eight take 30 s, and the predictions
    themselves are the budget's, tested in test_budget.py)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    flux = gpu_check.flux1_dev_params(str(ROOT / "examples" / "flux1-dev" / "params.yaml"))
    assert set(gpu_check.cases(flux)) == {"encode", "sampling (resident)", "sampling (offloaded)",
                                          "capture (offloaded)", "solve", "sandwich (double)", "sandwich (single)",
                                          "finisher step"}
    monkeypatch.chdir(tmp_path)  # benchmarks/results/ goes here
    gpu_check.main(["--device", "cpu", "--params", str(ROOT / "examples" / "flux1-dev" / "params.yaml"),
                    "--only", "sampling (resident),sampling (offloaded),solve"])
    rows = json.loads((tmp_path / "benchmarks" / "results" / "gpu_check.json").read_text())["cases"]
    assert set(rows) == {"sampling (resident)", "sampling (offloaded)", "solve"}
    assert all(r["predicted_GiB"] > 0 and r["measured_GiB"] is None for r in rows.values())
    # FLUX.1-dev's bf16 transformer alone is 22.2 GiB (23.8 GB): resident sampling holds it, offloaded far less
    assert 22 < rows["sampling (resident)"]["predicted_GiB"] < 30 and rows["sampling (offloaded)"]["predicted_GiB"] < 6
