"""How long a 10,000-task job array takes to be accepted, in ONE REST call.

    python -m benchmarks.arrays --tasks 10000

Through the real REST app, Core and store (the in-process test double, whose
gate has one core, so planning the queue barely competes with the calls).
Measured in the same run:

- ``array``: ``POST /v1/arrays`` of a script array (``skyport submit --array``);
- ``map``: ``fn.map(range(N))`` (a cloudpickled call per task, one call);
- ``cancel``: ``skyport cancel ARRAY_ID`` (one ``POST /v1/jobs/cancel``);
- baseline: ``POST /v1/jobs`` of one plain job, the mean of ``--baseline`` calls,
  and that times N (what N jobs cost one call at a time).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import skyport
from skyport.client.testing import TestControlPlane
from skyport.config import SubmitLimits
from skyport.models import JobSpec, Resources


def double(x: int) -> int:
    return 2 * x


def _plane(tmp: str, name: str, tasks: int) -> TestControlPlane:
    cp = TestControlPlane(Path(tmp) / name, gate={"cpus": 1, "max_nodes": 1})
    cp.service.intake.limits = SubmitLimits(max_queued_per_user=10 * tasks)
    return cp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=50, help="single submits timed")
    args = parser.parse_args()
    script = "#!/bin/bash\n" + "# a realistic script body\n" * 100 + "echo $SKYPORT_ARRAY_TASK_ID\n"
    spec = JobSpec(name="bench", script=script, resources=Resources(cpus_per_node=1))
    array_spec = spec.model_copy(update={"array": f"0-{args.tasks - 1}"})
    # each measure on a fresh control plane: the Core plans a 10,000-task queue on the
    # same event loop that answers the calls, which would slow the next measure
    with tempfile.TemporaryDirectory() as tmp:
        with _plane(tmp, "submit", args.tasks) as cp:
            client = cp.client("alice")
            client.submit(spec)  # warm: the first call builds what later calls reuse
            t0 = time.perf_counter()
            for _ in range(args.baseline):
                client.submit(spec)
            one_s = (time.perf_counter() - t0) / args.baseline
            t0 = time.perf_counter()
            view = client.submit_array(array_spec)
            array_s = time.perf_counter() - t0
            assert view.task_count == args.tasks
            with sqlite3.connect(cp.store.path) as db:
                stored = db.execute("SELECT SUM(LENGTH(spec)) FROM jobs WHERE array_id = ?",
                                    (view.id,)).fetchone()[0]

        with _plane(tmp, "map", args.tasks) as cp:
            fn = skyport.job(cpus=1, client=cp.client("alice"))(double)
            t0 = time.perf_counter()
            handles = fn.map(range(args.tasks))
            map_s = time.perf_counter() - t0
            assert len(handles) == args.tasks

        with _plane(tmp, "cancel", args.tasks) as cp:
            client = cp.client("alice")
            view = client.submit_array(array_spec)
            t0 = time.perf_counter()
            cancelled = client.cancel_many([view.id]).cancelled
            cancel_s = time.perf_counter() - t0
            assert len(cancelled) >= args.tasks - 1  # one may have started on the one core

        result = {
            "tasks": args.tasks,
            "one_job_submit_s": round(one_s, 4),
            "n_single_submits_s": round(one_s * args.tasks, 2),
            "array_submit_s": round(array_s, 3),
            "map_submit_s": round(map_s, 3),
            "cancel_array_s": round(cancel_s, 3),
            "array_vs_single_submits": round(one_s * args.tasks / array_s, 1),
            "script_bytes": len(script),
            "spec_bytes_in_task_rows": stored,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
