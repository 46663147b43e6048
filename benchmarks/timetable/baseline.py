"""A straightforward event-driven EASY simulator, independent of the engine.

It exists to check the engine's EASY (same rules, written the simple way) and
to give the replay's speed a yardstick. Rules: at each event (ends, then
submits), start queued jobs in submit order while the head fits; otherwise
reserve the head at its shadow time (running jobs' requested ends, a job past
its estimate counting as ending now) and start later jobs, in submit order,
that fit now and end by the shadow time or use no more than the processors
spare at the shadow time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks.timetable.swf import TraceJob

__all__ = ["simulate_easy"]


def simulate_easy(jobs: Sequence[TraceJob], capacity: int) -> tuple[list[float], float]:
    """Start times of ``jobs`` under EASY, and the wall time the simulation took."""
    wall0 = time.perf_counter()
    starts = [0.0] * len(jobs)
    queue: list[int] = []
    running: list[tuple[float, float, int]] = []  # (actual end, requested end, procs)
    free = capacity
    nxt = 0
    n = len(jobs)
    while nxt < n or running:
        candidates = [r[0] for r in running]
        if nxt < n:
            candidates.append(jobs[nxt].submit_s)
        now = min(candidates)
        still = []
        for r in running:
            if r[0] <= now:
                free += r[2]
            else:
                still.append(r)
        running = still
        while nxt < n and jobs[nxt].submit_s <= now:
            queue.append(nxt)
            nxt += 1
        while queue and jobs[queue[0]].procs <= free:
            i = queue.pop(0)
            free -= jobs[i].procs
            starts[i] = now
            running.append((now + jobs[i].run_s, now + jobs[i].req_s, jobs[i].procs))
        if not queue:
            continue
        head = jobs[queue[0]]
        avail = free
        shadow = None
        for _, est_end, procs in sorted(running, key=lambda r: r[1]):
            est_end = max(est_end, now)
            if shadow is not None and est_end > shadow:
                break
            avail += procs
            if shadow is None and avail >= head.procs:
                shadow = est_end
        assert shadow is not None
        extra = avail - head.procs
        for i in list(queue[1:]):
            job = jobs[i]
            if job.procs > free:
                continue
            if now + job.req_s <= shadow:
                pass
            elif job.procs <= extra:
                extra -= job.procs
            else:
                continue
            queue.remove(i)
            free -= job.procs
            starts[i] = now
            running.append((now + job.run_s, now + job.req_s, job.procs))
    return starts, time.perf_counter() - wall0
