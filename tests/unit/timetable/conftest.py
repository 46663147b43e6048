"""Hypothesis strategies for small random workloads."""

from __future__ import annotations

from hypothesis import strategies as st

from skyport.timetable import Pool, QueuedJob, RunningJob, Snapshot
from skyport.timetable.snapshot import Ended

CAPACITY = 16
NOW = 1_000.0


@st.composite
def snapshots(draw: st.DrawFn, max_queued: int = 12, max_running: int = 6) -> Snapshot:
    """A one-pool snapshot: running jobs (some past their estimate) and a queue."""
    running: list[RunningJob] = []
    busy = 0
    for i in range(draw(st.integers(0, max_running))):
        procs = draw(st.integers(1, CAPACITY))
        if busy + procs > CAPACITY:
            break
        busy += procs
        start = NOW - draw(st.integers(0, 50))
        est = draw(st.integers(0, 80))  # may already be over (start + est < now)
        running.append(RunningJob(f"r{i}", f"u{i % 3}", "p", procs, start, float(est)))
    queued = [
        QueuedJob(
            f"q{i}",
            f"u{draw(st.integers(0, 3))}",
            NOW - draw(st.integers(0, 100)),
            draw(st.integers(1, CAPACITY)),
            float(draw(st.integers(0, 60))),
        )
        for i in range(draw(st.integers(0, max_queued)))
    ]
    usage = {f"u{k}": float(draw(st.integers(0, 1000))) for k in range(4)}
    # Some owners have ended jobs (for predicting policies), some have none.
    history = {
        f"u{k}": tuple(
            Ended(float(draw(st.integers(0, 80))), float(draw(st.integers(0, 80))))
            for _ in range(draw(st.integers(0, 3)))
        )
        for k in range(4)
    }
    pools = (Pool("p", CAPACITY),)
    return Snapshot(NOW, tuple(queued), tuple(running), pools, usage, history)
