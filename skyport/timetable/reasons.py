"""Why each queued job waits, read off the same timetable it was planned with.

Pure, like the engine: a snapshot and its timetable in, one ``WaitReason`` per
queued job out (the codes follow Slurm's squeue REASON column where they
mean the same):

* ``Resources``: the job is next in line, or would be, but the cores it needs
  are not free yet on any pool it may use; its planned start says when.
* ``Priority``: the cores it needs are free now, but jobs ahead of it hold
  them (or hold a reservation over them).
* ``Impossible``: no pool it may use could ever hold it (the Core refuses
  such a job at submit, and ends one that became impossible).
* ``Unplanned``: it has no planned start this pass (past the number of jobs
  whose start is projected): it waits behind the ones that do.

``Held``, ``Dependency``, ``Budget``, ``Provisioning`` and ``GateUnhealthy`` are
known only to the Core (a held flag, the jobs a ``--dependency`` names, its
owner's budget (``skyport.core.budgets``), a job's
state, a gate that did not answer), which adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from skyport.timetable.snapshot import COST, JobId, Snapshot
from skyport.timetable.timetable import Placement, Timetable

__all__ = ["RESOURCES", "PRIORITY", "IMPOSSIBLE", "UNPLANNED", "WaitReason", "wait_reasons"]

RESOURCES = "Resources"
PRIORITY = "Priority"
IMPOSSIBLE = "Impossible"
UNPLANNED = "Unplanned"


@dataclass(frozen=True, slots=True)
class WaitReason:
    code: str
    detail: str


def wait_reasons(snapshot: Snapshot, table: Timetable,
                 placements: Sequence[Placement] | None = None) -> dict[JobId, WaitReason]:
    """A reason for every queued job that does not start now.

    ``placements``: the planned starts the caller kept (default: every entry of
    the table, which projects the whole queue).
    """
    now = snapshot.now_s
    free = {p.name: p.capacity for p in snapshot.pools}
    by_name = {p.name: p for p in snapshot.pools}
    for r in snapshot.running:
        if r.pool in free:
            free[r.pool] -= r.procs
    for p in table.to_start_now:  # what starts now is no longer free
        if p.pool in free:
            free[p.pool] -= p.procs
    starting = {p.job_id for p in table.to_start_now}
    planned = {p.job_id: p for p in (table.entries if placements is None else placements)}
    impossible = {u.job_id: u.reason for u in table.unplaceable}
    out: dict[JobId, WaitReason] = {}
    for job in snapshot.queued:
        if job.id in starting:
            continue
        if job.id in impossible:
            out[job.id] = WaitReason(IMPOSSIBLE, impossible[job.id])
            continue
        pools = job.allowed_pools or tuple(free)
        entry = planned.get(job.id)
        cap = job.max_price_per_hour
        if cap is not None:  # free cores over its price cap are not free to it
            pools = tuple(n for n in pools if n in by_name and job.node_price(by_name[n]) <= cap)
        if job.prefer == COST and entry is not None:  # it waits for the pool it chose
            pools = (entry.pool,)
        most_free = max((free.get(name, 0) for name in pools), default=0)
        when = f"; planned start in {_span(entry.start_s - now)} on {entry.pool}" \
            if entry is not None else ""
        if job.prefer == COST and entry is not None:
            when += " (prefer=cost: the cheapest pool that meets its deadline)"
        if job.procs > most_free:
            out[job.id] = WaitReason(
                RESOURCES, f"needs {job.procs} cores, {max(most_free, 0)} free now{when}")
        elif entry is None:
            out[job.id] = WaitReason(UNPLANNED, "waits behind the jobs planned this pass")
        else:
            out[job.id] = WaitReason(
                PRIORITY, f"{job.procs} cores are free, but held for jobs ahead of it{when}")
    return out


def _span(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"
