#!/usr/bin/env bash
# Sets up the environment and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
python -m pytest -q "$@"
