"""Worker of tests/test_distributed_stages.py, started by torchrun in a finished micro repository:
runs stage scripts' ``main`` one after another — each with the arguments dvc.yaml gives it, as
``python stages/<script> <args>`` would — in one launch, so the processes start once for all stages."""

import runpy
import sys

import torch

from fastflux_core import stage
from fastflux_core.stage import leave_group

if __name__ == "__main__":
    torch.use_deterministic_algorithms(True, warn_only=True)  # as stage.run_stage sets it
    for command in sys.argv[1:]:  # "capture.py 1 0"
        script, *args = command.split()
        sys.argv = [f"stages/{script}", *args]
        stage._joined = None  # each stage joins (and checks rank 0's command) as its own process would
        runpy.run_path(f"stages/{script}")["main"]()
    leave_group()
