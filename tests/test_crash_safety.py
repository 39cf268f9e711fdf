"""A stage killed with SIGKILL at any point leaves its previous good output (or none) and no
temporary where a hash sees it; the next run removes the leftovers and writes the same bytes.

capture@1 (a Zarr store) and sandwich@1 (a state folder and a metrics file) of the finished micro
pipeline A each run in their own copy (the two at once, one per core): killed during start-up, as soon as their temporary output exists, then re-run to
completion (bytes compared with DVC's run), then killed at 90 % of that run's time — or 70 %, 50 % when a
faster run finished first (a stage's run here is mostly start-up — imports — so earlier time-based
kills would repeat the first case).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_dvc_pipeline import ENV

STAGES = {  # stage → (command, its outputs)
    "capture@1": (["stages/capture.py", "1", "0"], ["data/capture/1"]),
    "sandwich@1": (["stages/sandwich.py", "1", "0"], ["data/state/1", "data/metrics/sandwich/1.json"]),
}  # every stage writes through the same atomic_dir / atomic_file: two kinds of output, not every stage
THREADS = {**ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the pipeline ran


def digest(ws: Path, outs: list[str]) -> dict[str, str]:
    found = {}
    for out in outs:
        p = ws / out
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                found[f.relative_to(ws).as_posix()] = hashlib.md5(f.read_bytes()).hexdigest()
    return found


def stray_temporaries(ws: Path) -> list[str]:
    """Temporaries anywhere a DVC hash looks (data/)."""
    return [p.as_posix() for p in (ws / "data").rglob("*.tmp-*")]


def run(ws: Path, argv: list[str], kill_when=None) -> tuple[int, float]:
    """Run a stage; SIGKILL it when ``kill_when(elapsed)`` turns true. Exit status and seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], cwd=ws, env=THREADS,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if kill_when is not None and kill_when(time.perf_counter() - t0):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.005)
    return proc.returncode, time.perf_counter() - t0


def exercise(stage: str, ws: Path) -> dict:
    argv, outs = STAGES[stage]
    tmp = ws / ".fastflux-tmp" / stage
    good = digest(ws, outs)
    assert good, f"{stage}: no outputs to compare"
    report = {"killed": []}

    def check_after_kill(when: str) -> None:
        # each output is its previous good bytes or absent (absent if the kill fell between removing the
        # old output and renaming the new one in; then DVC sees a missing output and re-runs the stage)
        for out in outs:
            found = digest(ws, [out])
            assert found in ({k: v for k, v in good.items() if k == out or k.startswith(out + "/")}, {}), \
                f"{stage} killed {when}: {out} changed"
        assert stray_temporaries(ws) == [], f"{stage} killed {when}"

    code, _ = run(ws, argv, kill_when=lambda t: t > 0.5)
    report["killed"].append(("start-up", code))
    check_after_kill("during start-up")
    code, _ = run(ws, argv, kill_when=lambda t: tmp.is_dir() and any(tmp.iterdir()))
    report["killed"].append(("temporary exists", code))
    check_after_kill("while writing its temporary output")

    code, seconds = run(ws, argv)
    assert code == 0, f"{stage} re-run failed"
    assert digest(ws, outs) == good, f"{stage}: the re-run wrote different bytes"
    assert not tmp.exists(), f"{stage}: leftovers not removed"

    for share in (0.9, 0.7, 0.5):  # late in the run; earlier if the run, faster now, finished first
        code, _ = run(ws, argv, kill_when=lambda t: t > share * seconds)
        report["killed"].append((f"{share:.0%}", code))
        check_after_kill(f"at {share:.0%} of its run")
        if code == -signal.SIGKILL:
            break
    return report


@pytest.fixture(scope="module")
def copies(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    out = {}
    for stage in STAGES:
        out[stage] = root / stage
        shutil.copytree(runs["A"], out[stage], symlinks=True, ignore=shutil.ignore_patterns(".git"))
    return out


def test_killed_stages_leave_good_outputs_and_rerun_to_the_same_bytes(copies):
    with ThreadPoolExecutor(len(STAGES)) as pool:
        reports = dict(zip(STAGES, pool.map(lambda s: exercise(s, copies[s]), STAGES)))
    for stage, report in reports.items():
        killed = [when for when, code in report["killed"] if code == -signal.SIGKILL]
        assert "start-up" in killed, (stage, report)  # at least start-up and one later point really were kills
        assert len(killed) >= 2, (stage, report)
