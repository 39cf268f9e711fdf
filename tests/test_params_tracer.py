"""The deps check's params tracer (tests/trace_params/sitecustomize.py, on the micro pipelines'
PYTHONPATH): a stage process records the keys it reads once it has its params — through a copy of a
section too (``importance_sampling``) —; a process that is no stage (the estimator placement starts
as ``python -m fastflux_core.budget``) records nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
from fastflux_core.params import importance_sampling
from fastflux_core.params_file import read_params
p = read_params({path!r})
p.ratio
importance_sampling(p).batch_size  # batch_size read on the copy only
"""


def probe(tmp_path: Path, folder: str) -> list[dict]:
    """Run the probe as ``<folder>/probe.py`` with the tracer on; the records it left."""
    script = tmp_path / folder / "probe.py"
    script.parent.mkdir()
    script.write_text(PROBE.format(path=str(ROOT / "params.yaml")))
    log = tmp_path / "log"
    env = {**os.environ, "FASTFLUX_PARAMS_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "trace_params"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    subprocess.run([sys.executable, str(script), "x"], env=env, cwd=ROOT, check=True, capture_output=True)
    return [json.loads(f.read_text()) for f in sorted(log.glob("*.json"))] if log.is_dir() else []


def test_a_stage_records_the_keys_it_reads_a_copys_included(tmp_path):
    (record,) = probe(tmp_path, "stages")
    assert record["script"] == "probe" and record["argv"] == ["x"]
    assert {"ratio", "importance.steps", "sampling.batch_size"} <= set(record["read"])
    assert not any(k.startswith(("model.", "prompts.", "capture.")) for k in record["read"])  # not read: not recorded


def test_a_process_that_is_no_stage_records_nothing(tmp_path):
    assert probe(tmp_path, "fastflux_core") == []
