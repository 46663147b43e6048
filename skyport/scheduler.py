"""The Scheduler: turns the Core's view of jobs and gates into a timetable.

The Core sends plain records (``PlanJob``, ``PlanPool``) and gets back a
``PlanEntry`` per queued job it can place.  The timetable engine behind it is
pure (``skyport.timetable``); this module only converts and chooses the
policy, so the Ray actor (``skyport.core.actor``) stays a thin shell.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanJob:
    id: str
    owner: str
    submit_s: float
    procs: int
    nodes: int
    est_runtime_s: float
    priority: int = 0
    pool: str | None = None  # running jobs: where
    allowed_pools: tuple[str, ...] = ()
    start_s: float | None = None  # running jobs: when they started


@dataclass(frozen=True)
class PlanPool:
    name: str
    capacity: int  # processors (cores) the gate hands out


@dataclass(frozen=True)
class PlanEntry:
    job_id: str
    start_s: float
    pool: str
    procs: int
    nodes: int


class SchedulerService:
    """Plans with a named policy; stateless between passes except for usage stats."""

    def __init__(self, policy: str = "fcfs", policy_config: dict | None = None) -> None:
        self.policy_name = policy
        self.policy_config = dict(policy_config or {})

    def plan(
        self, now_s: float, queued: list[PlanJob], running: list[PlanJob], pools: list[PlanPool]
    ) -> list[PlanEntry]:
        return _fcfs(now_s, queued, running, pools)


def _fcfs(
    now_s: float, queued: list[PlanJob], running: list[PlanJob], pools: list[PlanPool]
) -> list[PlanEntry]:
    """First come, first served over pools: each job at the earliest time it fits."""
    out: list[PlanEntry] = []
    # per pool: list of (end time, procs) of running/planned jobs
    busy: dict[str, list[tuple[float, int]]] = {p.name: [] for p in pools}
    cap = {p.name: p.capacity for p in pools}
    for r in running:
        if r.pool in busy:
            end = max(now_s, (r.start_s or now_s) + r.est_runtime_s)
            busy[r.pool].append((end, r.procs))
    earliest = now_s
    for job in sorted(queued, key=lambda j: (-j.priority, j.submit_s, j.id)):
        best: tuple[float, str] | None = None
        for pool in pools:
            if job.allowed_pools and pool.name not in job.allowed_pools:
                continue
            if job.procs > cap[pool.name]:
                continue
            t = _earliest_fit(max(now_s, earliest), job.procs, cap[pool.name], busy[pool.name])
            if best is None or t < best[0]:
                best = (t, pool.name)
        if best is None:
            continue
        start, pool_name = best
        earliest = start  # FCFS: nobody starts before an earlier job
        busy[pool_name].append((start + job.est_runtime_s, job.procs))
        out.append(PlanEntry(job.id, start, pool_name, job.procs, job.nodes))
    return out


def _earliest_fit(t0: float, procs: int, capacity: int, busy: list[tuple[float, int]]) -> float:
    # jobs in `busy` all started at or before t0 in FCFS order, so usage only drops over time
    used = sum(p for end, p in busy if end > t0)
    if capacity - used >= procs:
        return t0
    for end in sorted({e for e, _ in busy if e > t0}):
        used = sum(p for e, p in busy if e > end)
        if capacity - used >= procs:
            return end
    return t0
