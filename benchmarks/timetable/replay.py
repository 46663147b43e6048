"""Replay a trace through the timetable engine, as the Scheduler actor would.

The machine starts empty at the first submit. At every instant where a job
is submitted or ends, ends are applied first, then submits, then one planning
pass (``skyport.timetable.plan``) runs and the jobs it says to start now are
started. Jobs run for their logged runtime, whatever they requested (jobs are
not killed at their requested time). Pass times are measured here, in the
harness, with ``time.perf_counter``; the engine never reads a clock.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.timetable.swf import TraceJob
from skyport.timetable import (
    Capability,
    Policy,
    Pool,
    QueuedJob,
    RunningJob,
    Snapshot,
    UsageLedger,
    plan,
)
from skyport.timetable.predict import RuntimeHistory
from skyport.timetable.snapshot import Ended

__all__ = ["POOL", "ReplayResult", "replay"]

POOL = "machine"


@dataclass
class ReplayResult:
    """Start times (in trace order) and the cost of the planning passes."""

    starts: list[float]
    pass_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    busy: list[tuple[float, int]] = field(default_factory=list)
    """``(time, processors in use)`` after every pass, for the utilization plot."""


def replay(
    jobs: Sequence[TraceJob],
    capacity: int,
    policy: Policy,
    *,
    half_life_s: float = 86_400.0,
    record_busy: bool = False,
    overcommit: bool = False,
) -> ReplayResult:
    """Replay ``jobs`` (sorted by submit time) on ``capacity`` processors under ``policy``.

    ``overcommit`` leaves jobs running past their requested time out of the
    snapshot, so their processors look free and may be given to other jobs
    while they still run. The product never does this; it is here to compare
    with simulators that do (see ``benchmarks/RESULTS.md``).
    """
    wall0 = time.perf_counter()
    pools = (Pool(POOL, capacity),)
    ledger = UsageLedger(half_life_s) if Capability.NEEDS_USAGE in policy.capabilities else None
    # What the Scheduler would have seen end by ``now``, fed as the product feeds it.
    history = RuntimeHistory() if Capability.NEEDS_HISTORY in policy.capabilities else None
    queued_jobs = [
        QueuedJob(i, job.user, job.submit_s, job.procs, job.req_s) for i, job in enumerate(jobs)
    ]
    starts = [0.0] * len(jobs)
    queue: dict[int, QueuedJob] = {}
    running: dict[int, RunningJob] = {}
    ends: list[tuple[float, int]] = []
    pass_s: list[float] = []
    busy_log: list[tuple[float, int]] = []
    busy = 0
    nxt = 0
    n = len(jobs)
    clock = time.perf_counter
    no_usage: dict[str, float] = {}
    no_history: dict[str, tuple[Ended, ...]] = {}
    while nxt < n or ends:
        now = jobs[nxt].submit_s if nxt < n else ends[0][0]
        if ends and ends[0][0] < now:
            now = ends[0][0]
        while ends and ends[0][0] <= now:
            _, i = heapq.heappop(ends)
            done = running.pop(i)
            busy -= done.procs
            if ledger is not None:
                ledger.charge(done.owner, done.procs * jobs[i].run_s, now)
            if history is not None:
                history.record(done.owner, jobs[i].run_s, jobs[i].req_s)
        while nxt < n and jobs[nxt].submit_s <= now:
            queue[nxt] = queued_jobs[nxt]
            nxt += 1
        if not queue:
            continue
        usage = ledger.at(now, {job.owner for job in queue.values()}) if ledger else no_usage
        holding = tuple(running.values())
        if overcommit:
            holding = tuple(job for job in holding if job.start_s + job.est_runtime_s > now)
        snapshot = Snapshot(
            now,
            tuple(queue.values()),
            holding,
            pools,
            usage,
            history.view() if history is not None else no_history,
        )
        t0 = clock()
        to_start = plan(snapshot, policy).to_start_now
        pass_s.append(clock() - t0)
        for placement in to_start:
            i = int(placement.job_id)
            job = queue.pop(i)
            running[i] = RunningJob(i, job.owner, POOL, job.procs, now, job.est_runtime_s)
            starts[i] = now
            busy += job.procs
            heapq.heappush(ends, (now + jobs[i].run_s, i))
        if record_busy:
            busy_log.append((now, busy))
    return ReplayResult(starts, pass_s, time.perf_counter() - wall0, busy_log)
