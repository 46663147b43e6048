"""Time single planning passes on a large synthetic snapshot.

The snapshot has ``queued`` waiting and ``running`` running jobs on one pool;
sizes are powers of two and estimates log-uniform between a minute and two
days, drawn from a seeded generator; each of the 50 owners has two ended
jobs in ``Snapshot.history`` (read only by predicting policies). Two shapes:

* ``mixed``: about 100 processors free and a wide head job, so EASY
  backfills a few jobs and then scans until the machine is full;
* ``scan``: every queued job is wider than what is free, so a backfilling
  policy must look at every job and starts none (its worst case).

``decide_ms`` times ``plan(...)`` plus reading the starts (what the Scheduler
needs at every event); ``full_ms`` also materialises every queued job's
planned start (``Timetable.entries``). Both are wall times, median and best
(``_min``) of the repeats. ``decide_cpu_ms`` is the same pass in this
process's CPU time (``process_time``): on a shared machine, time spent waiting
for a core does not count there.
"""

from __future__ import annotations

import random
import statistics
import time

from skyport.timetable import Policy, Pool, QueuedJob, RunningJob, Snapshot, plan
from skyport.timetable.snapshot import Ended

__all__ = ["synthetic_snapshot", "time_pass"]


def synthetic_snapshot(
    queued: int = 10_000, running: int = 1_000, *, shape: str = "mixed", seed: int = 1
) -> Snapshot:
    """A seeded snapshot with ``queued`` waiting and ``running`` running jobs."""
    rng = random.Random(seed)
    now = 1_000_000.0

    def est() -> float:
        return round(60.0 * (2880.0 ** rng.random()))

    run = [
        RunningJob(
            f"r{i}",
            f"u{rng.randrange(50)}",
            "machine",
            2 ** rng.randrange(0, 5),
            now - rng.uniform(0, 3600),
            est(),
        )
        for i in range(running)
    ]
    busy = sum(job.procs for job in run)
    capacity = busy + 100
    lowest = 101 if shape == "scan" else 1
    queue = []
    for i in range(queued):
        procs = 2 ** rng.randrange(0, 10)
        if i == 0:
            procs = 512
        procs = max(procs, lowest)
        queue.append(QueuedJob(f"q{i}", f"u{rng.randrange(50)}", now - queued + i, procs, est()))
    # Each owner's last two ended jobs, for policies that predict runtimes.
    history = {
        f"u{k}": tuple(Ended(est() * rng.random(), est()) for _ in range(2)) for k in range(50)
    }
    pools = (Pool("machine", capacity),)
    return Snapshot(now, tuple(queue), tuple(run), pools, history=history)


def time_pass(snapshot: Snapshot, policy: Policy, repeats: int = 5) -> dict[str, float]:
    """Median and best milliseconds of a deciding pass and of a full timetable."""
    decide: list[float] = []
    decide_cpu: list[float] = []
    full: list[float] = []
    started = 0
    for _ in range(repeats):
        c0 = time.process_time()
        t0 = time.perf_counter()
        timetable = plan(snapshot, policy)
        started = len(timetable.to_start_now)
        t1 = time.perf_counter()
        decide_cpu.append((time.process_time() - c0) * 1e3)
        entries = timetable.entries
        t2 = time.perf_counter()
        assert len(entries) == len(snapshot.queued)
        decide.append((t1 - t0) * 1e3)
        full.append((t2 - t0) * 1e3)
    return {
        "decide_ms": statistics.median(decide),
        "full_ms": statistics.median(full),
        "decide_ms_min": min(decide),
        "full_ms_min": min(full),
        "decide_cpu_ms": statistics.median(decide_cpu),
        "decide_cpu_ms_min": min(decide_cpu),
        "started": started,
    }
