"""The results committed in git beside dvc.lock (metrics, the ranking, the sweep's table: the stages'
``cache: false`` outputs) are the bytes dvc.lock records. A lock regenerated without them leaves a
reader of the repository looking at an older run's numbers, and `dvc status` on a fresh clone
calling the pipeline changed."""

import hashlib
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_committed_output_has_the_md5_dvc_lock_records():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
    committed = {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])
                 if o["path"] in tracked}
    assert "data/metrics/evaluate.json" in committed  # the run's headline numbers are among them
    stale = [p for p, md5 in committed.items() if hashlib.md5((ROOT / p).read_bytes()).hexdigest() != md5]
    assert stale == [], f"committed outputs differ from dvc.lock: {stale} (commit the files the lock's run wrote)"
