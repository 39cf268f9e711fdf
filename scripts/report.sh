#!/usr/bin/env bash
# Sets up, runs the pipeline (dvc repro) and the paper's experiments as queued DVC experiments
# (python -m fastflux_core.experiments: the experiments a user's decision rests on — replacement kind,
# recipe options, capture inputs, baseline —, every variant × seeds 0,1,2 on embedded base 0; the
# replacement kinds, noised capture and the recipe with every option against L1 on bases 1 and 2 too:
# 63 runs; the paper's other ablations (order, target, width, sweep) and the importance proxy only on
# request, the families on their own page), then
# writes report/README.md (python -m fastflux_core.report). Arguments go to the experiments command, e.g.
#   bash scripts/report.sh --experiments replacement,order --seeds 0,1,2 --bases 0,1,2 --jobs 1
#   bash scripts/report.sh --experiments +order,width   (the default set and those two)
# The experiments start from HEAD: commit first. README.md says how long it takes. Interrupted, it
# resumes: run it again in the same clone and the experiments already there are not run again; on
# another machine, collect what finished (python -m fastflux_core.experiments --collect-only, the same
# arguments), commit report/results.json and report/runs/, and run it in a fresh clone of that commit:
# the runs kept there (today's code and params) are not run again either.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# every DVC experiment is a git commit under refs/exps: it needs an author
export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-$(git config user.name || echo fastflux-report)}"
export GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-$(git config user.email || echo report@fastflux.invalid)}"
export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}"
export GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"
start=$(date +%s)
# the default's pipeline first: the runs on base 0 then find the stages they share with it (encode,
# base, reference, ablate, rank) done and cached at HEAD's dvc.lock and skip them; runs on the other
# bases restore them from DVC's run-cache once the first run of that base has made them
dvc repro
# at what FLOPs an L1 model is as fast as FastFLUX, timed at FLUX.1-dev's width (the baseline's latency
# match); measured once per report, so one resumed after an interruption keeps the factor its runs used —
# in a fresh clone too, where it is read back from the committed report/results.json
if [ ! -f benchmarks/results/latency_match.json ]; then
  python -c 'import json, pathlib, sys; r = pathlib.Path("report/results.json")
m = json.loads(r.read_text()).get("latency_match") if r.is_file() else None
m and pathlib.Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
m and pathlib.Path(sys.argv[1]).write_text(json.dumps(m, indent=2))' benchmarks/results/latency_match.json
  [ -f benchmarks/results/latency_match.json ] || python benchmarks/latency_match.py
fi
# two runs at a time, one thread each (the sweep's reuse runs, whose latency is reported, run alone
# afterwards, on every core)
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m fastflux_core.experiments --jobs 2 --bases 0,1,2 \
  --latency-match benchmarks/results/latency_match.json "$@"
python -m fastflux_core.report
echo "report written in $(( ($(date +%s) - start) / 60 )) min (after setup)"
