"""Job arrays end to end on the shared control plane (local gate, real agents)."""

from __future__ import annotations

import time

import pytest

import skyport
from skyport.models import Job, JobState
from skyport.script import build_spec

from .conftest import ControlPlane, processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

S = JobState

TASK = """#!/bin/bash
#SKYPORT --name=sweep --cpus-per-node=1 --time=00:05:00
#SKYPORT --array=0-5%2 --output=out.txt
echo "array=$SKYPORT_ARRAY_JOB_ID task=$SKYPORT_ARRAY_TASK_ID" \
  "count=$SKYPORT_ARRAY_TASK_COUNT min=$SKYPORT_ARRAY_TASK_MIN max=$SKYPORT_ARRAY_TASK_MAX" \
  "job=$SKYPORT_JOB_ID"
echo "result of $SKYPORT_ARRAY_TASK_ID" > out.txt
sleep 2
"""


def _most_at_once(tasks: list[Job]) -> int:
    """The most tasks out of QUEUED at one moment, from the recorded transitions.

    A task is out of the queue from its first event after QUEUED until its
    terminal event; at equal times an end counts before a start (the Core
    records the end of one before it plans the next).
    """
    marks: list[tuple[float, int]] = []
    for job in tasks:
        out = [e for e in job.events if e.state is not S.QUEUED]
        ended = [e for e in job.events if e.state.is_terminal()]
        assert out and ended, job.events
        marks.append((out[0].time.timestamp(), 1))
        marks.append((ended[-1].time.timestamp(), -1))
    most = now = 0
    for _, step in sorted(marks):
        now += step
        most = max(most, now)
    return most


def test_a_throttled_array_runs_each_task_with_its_env_and_output(admin) -> None:
    view = admin.submit_array(build_spec(TASK))
    assert (view.task_count, view.throttle, view.array) == (6, 2, "0-5%2")
    ids = view.task_ids()
    assert ids == [f"{view.id}_{i}" for i in range(6)]
    done = [admin.wait(i, timeout=300) for i in ids]
    assert [j.state for j in done] == [S.SUCCEEDED] * 6, [j.reason for j in done]
    for i, job in enumerate(done):
        assert (job.array_id, job.array_index) == (view.id, i)
        out = admin.logs(job.id).data.decode()
        assert out == (f"array={view.id} task={i} count=6 min=0 max=5 job={job.id}\n"), out
        assert admin.download(job.id, "outputs/out.txt") == f"result of {i}\n".encode()
    assert _most_at_once(done) <= 2
    assert admin.array(view.id).counts == {S.SUCCEEDED: 6}


def test_map_returns_each_items_value_in_order(controlplane: ControlPlane) -> None:
    @skyport.job(cpus=1, time="2m", home=controlplane.home)
    def tagged(x: int) -> str:
        import os

        return f"{x}:{os.environ['SKYPORT_ARRAY_TASK_ID']}"

    handles = tagged.map([10, 20, 30])
    assert [h.result(timeout=240) for h in handles] == ["10:0", "20:1", "30:2"]


def test_cancel_array_id_ends_every_task_and_its_processes(admin) -> None:
    spec = build_spec("#!/bin/bash\n#SKYPORT --array=0-3%1 --cpus-per-node=1 --time=10m\n"
                      "sleep 600\n")
    view = admin.submit_array(spec)
    first = view.task_ids()[0]
    deadline = time.monotonic() + 120
    while admin.job(first).state is not S.RUNNING or not processes_of_job(first):
        assert time.monotonic() < deadline, admin.job(first)
        time.sleep(0.2)
    assert admin.job(view.task_ids()[1]).wait_reason == "ArrayTaskLimit"
    answer = admin.cancel_many([view.id])
    assert sorted(answer.cancelled) == sorted(view.task_ids())
    assert admin.array(view.id).counts == {S.CANCELLED: 4}
    deadline = time.monotonic() + 60
    while processes_of_job(first):
        assert time.monotonic() < deadline, "the task's processes outlived the cancel"
        time.sleep(0.2)
