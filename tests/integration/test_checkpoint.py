"""Checkpoints, requeues and surviving lost nodes and preemptions, end to end."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

import skyport
from skyport.models import Job, JobSpec, JobState
from skyport.protocol import CheckpointRecord
from skyport.script import build_spec, cli_directives

from .conftest import ControlPlane, processes_of_job

pytestmark = [pytest.mark.integration]

N = 60
STEP_S = 0.25
COUNTER = f"""#!/bin/bash
#SKYPORT --nodes=2 --cpus-per-node=1 --checkpoint-every=5s --time=5m
#SKYPORT --name=counter
f="$SKYPORT_CHECKPOINT_DIR/count"
i=$(cat "$f" 2>/dev/null || echo 0)
echo "attempt $SKYPORT_RESTART_COUNT starts at $i"
echo "$SKYPORT_NODE_RANK" > "$SKYPORT_NODE_CHECKPOINT_DIR/rank"
while [ "$i" -lt {N} ]; do
  sleep {STEP_S}
  i=$((i + 1))
  echo "$i" > "$f.tmp" && mv "$f.tmp" "$f"
done
echo "count=$i"
"""


def _wait(client, job_id: str, pred, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if pred(job):
            return job
        assert time.monotonic() < deadline, [(e.state.value, e.reason) for e in job.events]
        time.sleep(0.2)


def _running(client, job_id: str, attempt: int, timeout: float = 60) -> Job:
    return _wait(client, job_id,
                 lambda j: j.state == JobState.RUNNING and j.restarts == attempt, timeout)


def _checkpointed(client, job_id: str, version: int, timeout: float = 30) -> CheckpointRecord:
    deadline = time.monotonic() + timeout
    while True:
        latest = client.checkpoints(job_id).latest
        if latest and latest.version >= version:
            return latest
        assert time.monotonic() < deadline, client.job(job_id).events
        time.sleep(0.2)




@pytest.mark.timeout(150)
def test_counter_survives_kill_node_and_preemption(admin) -> None:
    rng = random.Random()
    job = admin.submit(build_spec(COUNTER))
    _running(admin, job.id, 0)
    first = _checkpointed(admin, job.id, 1)  # the first periodic checkpoint is stored
    print(f"\nfirst checkpoint: {first.reason}, took {first.took_s}s")
    time.sleep(rng.uniform(0, 3))
    admin.debug_kill_node(job.id)  # node 1
    job1 = _running(admin, job.id, 1)
    assert "node lost" in [e.reason for e in job1.events if e.state == JobState.QUEUED][1]
    time.sleep(rng.uniform(2, 4))
    admin.debug_preempt(job.id, notice_s=10)
    _running(admin, job.id, 2)
    done = admin.wait(job.id, timeout=90)
    assert done.state == JobState.SUCCEEDED, [(e.state.value, e.reason) for e in done.events]
    out = admin.logs(job.id).data.decode()
    assert out.count(f"count={N}") == 1, out
    starts = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines()
              if line.startswith("attempt ")]
    assert starts[0] == 0 and all(s > 0 for s in starts[1:]), out  # resumed, not restarted
    reasons = [e.reason for e in done.events if e.state == JobState.QUEUED][1:]
    assert len(reasons) == 2 and "node lost" in reasons[0] and "preempted" in reasons[1]
    runs = done.running_spans()
    busy = sum(b - a for a, b in runs)
    total = runs[-1][1] - runs[0][0]
    uninterrupted = N * STEP_S
    print(f"\ncounter: uninterrupted ~{uninterrupted:.1f}s, running {busy:.1f}s, "
          f"first start to end {total:.1f}s, restart gaps "
          f"{[round(runs[i + 1][0] - runs[i][1], 2) for i in range(len(runs) - 1)]}")
    # what was lost: at most one interval per kill, plus the restarts themselves
    assert busy < uninterrupted + 2 * 5 + 2 * 3, runs
    for e in done.events:
        print(e.time.strftime("%H:%M:%S.%f")[:-3], e.state.value, e.reason)
    assert processes_of_job(job.id) == []


MPI_COUNTER = Path(__file__).parents[2] / "examples" / "checkpoint-counter"
MPI_N, MPI_STEP_S, EVERY_S = 60, 0.25, 5


def _mpi_counter_spec(name: str) -> JobSpec:
    script = (MPI_COUNTER / "job.sh").read_text()
    assert f"counter.py {MPI_N} {MPI_STEP_S}" in script
    program = (MPI_COUNTER / "counter.py").as_uri()
    spec = build_spec(script, cli_directives([("input", program), ("name", name)]))
    assert (spec.resources.nodes, spec.checkpoint_every_s) == (2, EVERY_S)
    return spec


def _starts(out: str) -> list[int]:
    return [int(line.split()[4]) for line in out.splitlines() if line.startswith("attempt ")]


@pytest.mark.timeout(150)
def test_mpi_counter_survives_kill_node_and_preemption(admin) -> None:
    """The issue's first "must show", with the MPI example ``examples/checkpoint-counter``.

    An identical job runs beside it, uninterrupted, under the same load: its
    running time is the uninterrupted time.  Restart overhead: from the
    failure's QUEUED event (requeued) to RUNNING again.
    """
    rng = random.Random()
    plain = admin.submit(_mpi_counter_spec("counter-plain"))
    job = admin.submit(_mpi_counter_spec("counter-failures"))
    _running(admin, job.id, 0)
    _checkpointed(admin, job.id, 1)  # the first periodic checkpoint is stored
    time.sleep(rng.uniform(0, 3))
    killed_at = time.time()
    admin.debug_kill_node(job.id)  # node 1
    _running(admin, job.id, 1)
    _checkpointed(admin, job.id, 2, timeout=60)  # this attempt has stored a checkpoint
    time.sleep(rng.uniform(0, 3))
    preempted_at = time.time()
    admin.debug_preempt(job.id, notice_s=10)
    _running(admin, job.id, 2)
    done = admin.wait(job.id, timeout=90)
    events = [(e.state.value, e.reason) for e in done.events]
    assert done.state == JobState.SUCCEEDED, events
    out = admin.logs(job.id).data.decode()
    err = admin.logs(job.id, "stderr").data.decode()
    assert out.count(f"count={MPI_N}") == 1 and out.count("count=") == 1, (out, err)
    starts = _starts(out)
    assert len(starts) == 3 and starts[0] == 0, out
    assert all(s > 0 for s in starts[1:]), out  # each restart resumed, none started over
    assert all("ranks 2" in line for line in out.splitlines() if line.startswith("attempt "))
    reasons = [e.reason for e in done.events if e.state == JobState.QUEUED][1:]
    assert len(reasons) == 2 and "node lost" in reasons[0] and "preempted" in reasons[1], events
    # every rank's state went into its own node's part of the checkpoints
    latest = admin.checkpoints(job.id).latest
    assert latest is not None
    files = {f.path.split("/", 1)[1] for f in latest.files}
    assert {"shared/count", "nodes/0/rank-0.json", "nodes/1/rank-1.json"} <= files, files

    base = admin.wait(plain.id, timeout=60)
    assert base.state == JobState.SUCCEEDED and base.restarts == 0, base.events
    assert _starts(admin.logs(plain.id).data.decode()) == [0]
    (b0, b1), = base.running_spans()
    uninterrupted = b1 - b0
    runs = done.running_spans()
    assert len(runs) == 3, events
    total = runs[-1][1] - runs[0][0]  # first start to the end, the restarts included
    busy = sum(b - a for a, b in runs)
    queued = [e.time.timestamp() for e in done.events if e.state == JobState.QUEUED][1:]
    # restart overhead: from the end of an attempt's RUNNING stretch to RUNNING again, in
    # two parts: the lost attempt wound up (its cluster deleted) -> requeued -> RUNNING
    gaps = [runs[k + 1][0] - runs[k][1] for k in range(2)]
    wound_up = [queued[k] - runs[k][1] for k in range(2)]
    requeued_to_running = [runs[k + 1][0] - queued[k] for k in range(2)]
    noticed = [queued[0] - killed_at, queued[1] - preempted_at]  # failure injected -> requeued
    bound = uninterrupted + 2 * EVERY_S + sum(gaps)
    r = lambda xs: [round(x, 2) for x in xs]  # noqa: E731
    print(f"\nmpi counter, 2 nodes x 1 rank, N={MPI_N} steps of {MPI_STEP_S}s, checkpoint every "
          f"{EVERY_S}s\n  uninterrupted (the same job beside it): {uninterrupted:.2f}s\n"
          f"  node loss + preemption: first start to end {total:.2f}s, running {busy:.2f}s, "
          f"attempts started at {starts}\n"
          f"  restart overheads {r(gaps)}s = wound up {r(wound_up)}s + requeued -> RUNNING "
          f"{r(requeued_to_running)}s; failure injected -> requeued {r(noticed)}s\n"
          f"  bound: uninterrupted + 2 x {EVERY_S}s + overheads = {bound:.2f}s")
    for e in done.events:
        print(" ", e.time.strftime("%H:%M:%S.%f")[:-3], e.state.value, e.reason)
    assert total < bound, (total, bound, runs)
    assert processes_of_job(job.id) == [] and processes_of_job(plain.id) == []


@pytest.mark.timeout(90)
def test_max_restarts_one_with_two_kills_fails_listing_both(admin) -> None:
    spec = build_spec(COUNTER.replace("--time=5m", "--time=5m --max-restarts=1"))
    assert spec.max_restarts == 1
    job = admin.submit(spec)
    _running(admin, job.id, 0)
    admin.debug_kill_node(job.id, 0)
    _running(admin, job.id, 1)
    admin.debug_kill_node(job.id, 1)
    done = admin.wait(job.id, timeout=60)
    assert done.state == JobState.FAILED, done.events
    assert "gave up after 1 restart(s)" in done.reason
    assert "attempt 1: node lost" in done.reason and "attempt 2: node lost" in done.reason
    assert "n0" in done.reason and "n1" in done.reason  # which node, each time
    assert processes_of_job(job.id) == []


@pytest.mark.timeout(90)
def test_requeue_by_hand_resumes_from_the_checkpoint(admin) -> None:
    job = admin.submit(build_spec(COUNTER))
    _running(admin, job.id, 0)
    time.sleep(3)
    asked = admin.requeue(job.id)  # checkpoints first, then requeues
    assert asked.state == JobState.RUNNING
    _running(admin, job.id, 1)
    done = admin.wait(job.id, timeout=60)
    assert done.state == JobState.SUCCEEDED, done.events
    requeued = [e.reason for e in done.events if e.state == JobState.QUEUED][1]
    assert requeued.startswith("requeued by admin (checkpoint v1 saved)"), requeued
    out = admin.logs(job.id).data.decode()
    starts = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines()
              if line.startswith("attempt ")]
    assert starts[0] == 0 and starts[1] >= 8, out  # ~3 s of counting kept
    assert out.count(f"count={N}") == 1, out
    latest = admin.checkpoints(job.id).latest
    assert latest is not None
    assert latest.version >= 1 and latest.files and latest.time


@pytest.mark.timeout(90)
def test_function_job_state_survives_a_lost_node(controlplane: ControlPlane, admin) -> None:
    @skyport.job(cpus=1, time="2m", home=controlplane.home)
    def count_to(n: int) -> tuple[int, int, str]:
        import os
        import time

        from skyport import checkpoint

        start = checkpoint.load(default=0)
        for i in range(start, n):
            time.sleep(0.25)
            if (i + 1) % 4 == 0:
                assert checkpoint.save(i + 1) is not None  # stored when it returns
        return start, n, os.environ["SKYPORT_RESTART_COUNT"]

    handle = count_to.submit(40)
    _running(admin, handle.id, 0)
    _checkpointed(admin, handle.id, 2)
    admin.debug_kill_node(handle.id)
    start, n, restarts = handle.result(timeout=60)
    assert (n, restarts) == (40, "1") and start >= 8, (start, n, restarts)
