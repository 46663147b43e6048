"""What a ``--dependency`` costs a 10,000-task job array, against the same array without one.

    python -m benchmarks.array_dependencies --tasks 10000

Through the real REST app, Core and store (the in-process test double, gate of
one core that the upstream job holds, so no task of the arrays ever starts).
Each measure has its baseline in the same run:

- ``submit``: ``POST /v1/arrays`` of an array with ``--dependency=afterok:UP``
  (UP queued) against the same array without one;
- ``pass``: one scheduling pass (``CoreService.schedule_pass``) with the
  dependent array's tasks queued, against one with the plain array's;
- ``list``: ``GET /v1/jobs`` of every task (each with its wait reason);
- ``cascade``: UP fails and every task of the dependent array is cancelled
  (the agent's exit call, which settles the dependants) against ``skyport cancel
  ARRAY_ID`` of the plain array;
- ``upstream task end``: the dependants lookup when one task of a 10,000-task
  upstream array succeeds while a 10,000-task array waits on it with afterok,
  against the lookup for a job no one depends on.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyport.client.testing import TestControlPlane
from skyport.config import SubmitLimits
from skyport.models import JobSpec, JobState, Resources


def _plane(tmp: str, name: str, tasks: int) -> TestControlPlane:
    cp = TestControlPlane(Path(tmp) / name, gate={"cpus": 1, "max_nodes": 1})
    cp.service.intake.limits = SubmitLimits(max_queued_per_user=10 * tasks)
    return cp


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _median(fn: Callable[[], Any], times: int = 7) -> tuple[float, Any]:
    """The median of ``times`` calls: the Core's planning passes hold the store's lock
    now and then, and one call may wait for one."""
    runs = [_timed(fn) for _ in range(times)]
    return sorted(t for t, _ in runs)[times // 2], runs[-1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    n = args.tasks
    script = "#!/bin/bash\n" + "# a realistic script body\n" * 100 + "echo $SKYPORT_ARRAY_TASK_ID\n"
    one = JobSpec(name="up", script=script, resources=Resources(cpus_per_node=1))
    array = one.model_copy(update={"name": "bench", "array": f"0-{n - 1}"})
    r: dict[str, Any] = {"tasks": n}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dependent in (("plain", False), ("dependent", True)):
            with _plane(tmp, name, n) as cp:
                c = cp.client("alice")
                up = c.submit(one).id
                cp.wait_state(up, JobState.PROVISIONING)  # holds the one core: nothing starts
                spec = array.model_copy(update={"dependency": f"afterok:{up}"}) \
                    if dependent else array
                r[f"{name}_submit_s"], view = _timed(lambda: c.submit_array(spec))  # noqa: B023
                r[f"{name}_pass_s"], _ = _median(
                    lambda: cp._run(cp.service.schedule_pass()), 3)  # noqa: B023
                r[f"{name}_list_s"], listed = _median(c.jobs, 3)
                assert len(listed) == n + 1
                if dependent:
                    with sqlite3.connect(cp.store.path) as db:
                        r["dependency_rows"] = db.execute(
                            "SELECT COUNT(*) FROM dependencies").fetchone()[0]
                    agents = cp.start(up)
                    r["cascade_s"], _ = _timed(lambda: agents.exit(1))  # noqa: B023
                    assert c.array(view.id).counts == {JobState.CANCELLED: n}
                else:
                    r["cancel_array_s"], _ = _timed(
                        lambda: c.cancel_many([view.id]))  # noqa: B023
        with _plane(tmp, "upstream", n) as cp:
            c = cp.client("alice")
            a = c.submit_array(array)
            c.submit_array(array.model_copy(update={"dependency": f"afterok:{a.id}"}))
            desk = cp.service.dependencies
            cp.store.transition(f"{a.id}_5", JobState.CANCELLED, "bench")  # as if it ended
            r["task_end_lookup_s"], event = _timed(lambda: desk.changed([f"{a.id}_5"]))
            assert event is not None and len(event.jobs) == n  # a failure: all are read
            other = c.submit(one).id
            r["baseline_lookup_s"], _ = _median(lambda: desk.changed([other]))
            with sqlite3.connect(cp.store.path) as db:  # a task that SUCCEEDED instead
                db.execute("UPDATE jobs SET state = 'SUCCEEDED' WHERE id = ?", (f"{a.id}_5",))
            r["task_succeeded_lookup_s"], event = _median(lambda: desk.changed([f"{a.id}_5"]))
            assert event is None  # not one task of the dependent array read
    for k in list(r):
        if k.endswith("_s"):
            r[k] = round(r[k], 5)
    r["submit_ratio"] = round(r["dependent_submit_s"] / r["plain_submit_s"], 2)
    r["pass_ratio"] = round(r["dependent_pass_s"] / r["plain_pass_s"], 2)
    r["list_ratio"] = round(r["dependent_list_s"] / r["plain_list_s"], 2)
    r["cascade_vs_cancel"] = round(r["cascade_s"] / r["cancel_array_s"], 2)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
