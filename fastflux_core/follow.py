"""The other nodes of a multi-node run: join each stage that node 0's ``dvc repro`` starts.

Node 0 runs ``dvc repro`` with a multi-node launcher in ``FASTFLUX_LAUNCH``; every other node runs
this module under the same launcher, in a loop (README: many machines)::

    while python -m torch.distributed.run --nnodes 2 --node-rank 1 --nproc_per_node 8 \\
        --rdzv-backend c10d --rdzv-endpoint node0:29500 -m fastflux_core.follow; do :; done

Each launch joins the next stage's rendezvous; once the process group exists, rank 0 sends its
command line (:func:`fastflux_core.stage.current_world`) and this process runs that stage
script as ``python stages/<stage>.py …`` would — so the other nodes need no list of stages and
cannot run them out of step. The repository must be on a filesystem every node mounts at the same
path (the working directory of every launch).
"""

import runpy
import sys

from fastflux_core.stage import current_world

if __name__ == "__main__":
    sys.argv = ["fastflux-follow"]  # replaced by rank 0's command line
    current_world("auto", follow=True)
    runpy.run_path(sys.argv[0], run_name="__main__")
