"""``FASTFLUX_LAUNCH`` that is not ``-m <installed launcher> …`` stops stage validate with one line
naming the variable (issue 30, 15) — before, the first launched stage failed with Python's own
message ("can't open file 'garbage'", "No module named no_such_launcher")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastflux_core.errors import FastFluxError
from fastflux_core.stage import check_launcher

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value, message", [
    ("garbage", r"^FASTFLUX_LAUNCH is 'garbage': it goes between python and the stage script, so it must be empty or "
                r"'-m <launcher module> <its options>'"),
    ("-m", r"^FASTFLUX_LAUNCH is '-m': it goes between"),
    ("--multi_gpu -m accelerate.commands.launch", r"^FASTFLUX_LAUNCH is '--multi_gpu -m"),
    ("-m no_such_launcher --nproc_per_node 2", r"^FASTFLUX_LAUNCH names the module 'no_such_launcher', which this "
                                               r"Python cannot import"),
    ("-m no_such_package.launch", r"names the module 'no_such_package\.launch'"),
])
def test_a_launcher_that_cannot_run_is_refused(value, message):
    with pytest.raises(FastFluxError, match=message):
        check_launcher(value)


def test_the_documented_launchers_and_none_pass(monkeypatch):
    for value in ("", "  ", "-m accelerate.commands.launch --multi_gpu --num_processes 8",
                  "-m torch.distributed.run --nproc_per_node 8"):
        check_launcher(value)
    monkeypatch.setenv("FASTFLUX_LAUNCH", "garbage")
    with pytest.raises(FastFluxError, match="FASTFLUX_LAUNCH is 'garbage'"):
        check_launcher()  # the environment's


def test_stage_validate_reads_it_first(tmp_path):
    """The stage itself, as ``dvc repro`` runs it: one line, exit status 2 — before params.yaml is read
    (tmp_path holds none)."""
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "validate.py")], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "FASTFLUX_LAUNCH": "garbage",
                                          "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(
        "error: FASTFLUX_LAUNCH is 'garbage'")
