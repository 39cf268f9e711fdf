"""Cold `dvc repro` vs a warm `dvc exp run -S ratio=…`, measured in one run on this machine.

Copies the repository's tracked files into a fresh temporary git repository (no DVC cache), times a
cold `dvc repro` of the whole default pipeline, commits, then times `dvc exp run -S ratio=<r>` (which
should re-run only validate, assemble, evaluate and export). Also lists the stages whose dvc.lock entry
differs from the repository's committed dvc.lock (same code and params → same outputs: none).

Run: python benchmarks/dvc_cold_warm.py [--ratio 0.2]
Prints and writes benchmarks/results/dvc_cold_warm.json.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import report

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # the venv's dvc
       "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench",
       "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


def _run(args: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=0.2)
    args = ap.parse_args()
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    with tempfile.TemporaryDirectory(prefix="fastflux-bench-") as tmp:
        repo = Path(tmp) / "repo"
        for f in files:
            if f == "dvc.lock" or f.startswith("data/timing/"):
                continue  # a cold run: nothing locked, no timings
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
        _run(["git", "init", "-q"], repo)
        _run(["git", "add", "-A"], repo)
        _run(["git", "commit", "-qm", "bench"], repo)
        cold, _ = _run(["dvc", "repro"], repo)
        cold_lock, committed = (yaml.safe_load(p.read_text())["stages"] for p in (repo / "dvc.lock", ROOT / "dvc.lock"))
        differ = sorted(k for k in set(cold_lock) | set(committed) if cold_lock.get(k) != committed.get(k))
        _run(["git", "add", "-A"], repo)
        _run(["git", "commit", "-qm", "cold run"], repo)
        warm, out = _run(["dvc", "exp", "run", "-S", f"ratio={args.ratio}"], repo)
        ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    report("dvc_cold_warm", {
        "cold_repro_seconds": round(cold, 1), "warm_exp_run_seconds": round(warm, 1),
        "warm_over_cold": round(warm / cold, 4), "warm_stages_run": ran, "ratio": args.ratio,
        "lock_stages": len(cold_lock), "lock_stages_differing_from_committed": differ, "cpus": os.cpu_count(),
    })


if __name__ == "__main__":
    main()
