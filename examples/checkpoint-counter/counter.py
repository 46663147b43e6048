"""Count to N in steps on every MPI rank, and survive restarts through Sky Port checkpoints.

    counter.py N STEP_S    (under $SKYPORT_MPIEXEC; defaults 60 and 0.25)

Each step every rank waits STEP_S, counts one, and the ranks agree on the count
with an allreduce.  The state is kept where Sky Port copies it at every
checkpoint, each file written atomically (a temporary file, then a rename):

* rank 0: the count in ``$SKYPORT_CHECKPOINT_DIR/count``;
* every rank: its own state in ``$SKYPORT_NODE_CHECKPOINT_DIR/rank-<r>.json``.

On a restart every rank reads back what its node's part of the latest
checkpoint holds and the ranks resume from the smallest count among them (the
nodes' parts are copied a moment apart, so one may be a step ahead).  Rank 0
prints where each attempt starts and, once, the final count.
"""

import json
import os
import sys
import time
from pathlib import Path

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 60
step_s = float(sys.argv[2]) if len(sys.argv) > 2 else 0.25
shared = Path(os.environ["SKYPORT_CHECKPOINT_DIR"]) if rank == 0 else None
mine = Path(os.environ["SKYPORT_NODE_CHECKPOINT_DIR"]) / f"rank-{rank}.json"
node = os.environ.get("SKYPORT_NODE_NAME", "")


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def saved() -> int:
    """The count this rank's checkpointed state holds (0 on a first start)."""
    counts = []
    if shared is not None and (shared / "count").exists():
        counts.append(int((shared / "count").read_text()))
    if mine.exists():
        counts.append(int(json.loads(mine.read_text())["count"]))
    return min(counts, default=0)


count = comm.allreduce(saved(), op=MPI.MIN)
if rank == 0:
    restarts = os.environ.get("SKYPORT_RESTART_COUNT", "0")
    print(f"attempt {restarts} starts at {count} ranks {size}", flush=True)
while count < n:
    time.sleep(step_s)
    count += 1
    low, high = comm.allreduce(count, op=MPI.MIN), comm.allreduce(count, op=MPI.MAX)
    if low != high:
        print(f"rank {rank}: the ranks disagree ({low}..{high})", file=sys.stderr, flush=True)
        comm.Abort(2)
    write(mine, json.dumps({"rank": rank, "count": count, "node": node}))
    if shared is not None:
        write(shared / "count", str(count))
if rank == 0:
    print(f"count={count}", flush=True)
