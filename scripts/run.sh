#!/usr/bin/env bash
# Sets up the environment and runs the whole pipeline (`dvc repro`) on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
dvc repro "$@"
