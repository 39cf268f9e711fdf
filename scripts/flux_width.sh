#!/usr/bin/env bash
# FLUX-width rehearsal (issue 12, item 6): the whole `dvc repro` through model.source: flux in bfloat16
# on a random-weight folder with FLUX.1-dev's block width (examples/flux-width/params.yaml), run in a
# clone of this repository's HEAD so the working copy's data/ is untouched. FAMILY=sd3: the same through
# model.source: sd3 at SD3-medium's width (examples/sd3-width/params.yaml).
# Usage: [FAMILY=sd3] bash scripts/flux_width.sh [WORKDIR]   (default /tmp/fastflux-<family>-width; ~3 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
family="${FAMILY:-flux}"
work="$(realpath -m "${1:-/tmp/fastflux-$family-width}")"
rm -rf "$work/repo" && mkdir -p "$work"
git clone -q . "$work/repo"
python scripts/make_flux_width_folder.py "$work/models" --family "$family" --params "$work/repo/params.yaml"
cd "$work/repo"
export PYTHONPATH="$work/repo"   # the clone's code, not the editable install's
dvc repro
python - <<'PY'
import json, pathlib
for f in ("data/metrics/evaluate.json", "data/metrics/speed.json"):
    p = pathlib.Path(f)
    if p.is_file():
        print(f, json.dumps(json.loads(p.read_text()), indent=1)[:3000])
PY
