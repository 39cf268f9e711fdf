#!/usr/bin/env bash
# The GPU check (issue 32, 3), nothing downloaded: the budget's predicted device memory against
# torch.cuda.max_memory_allocated for every stage kind at FLUX.1-dev's shapes, random weights
# (benchmarks/gpu_check.py); least squares over 2 NCCL processes equal to one (tests/test_distributed.py,
# where there are 2 GPUs: NCCL does not put two ranks on one); benchmarks/scaling.py on the GPU.
# Writes benchmarks/results/{gpu_check,scaling}.json. Without a GPU it runs the predictions alone, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh > /dev/null
source scripts/env.sh
start=$(date +%s)
python benchmarks/gpu_check.py "$@"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  FASTFLUX_TEST_DEVICE=cuda python -m pytest -q tests/test_distributed.py -k least_squares
else
  echo "least squares over 2 NCCL processes: needs 2 GPUs, this machine has $gpus — not run"
fi
if [ "$gpus" -ge 1 ]; then
  python benchmarks/scaling.py --device cuda --procs "1$([ "$gpus" -ge 2 ] && echo ,2)"
fi
echo "gpu check done in $(( $(date +%s) - start )) s"
