"""What the Core hands the scheduler and the reaper: pure functions over jobs and gates."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from skyport.core.placement import node_prices
from skyport.core.warm import WARM_PREFIX
from skyport.errors import NotFoundError
from skyport.gate import Capacity, Flavor
from skyport.models import Job, JobState
from skyport.store import JobStore
from skyport.timetable import Pool, QueuedJob, RunningJob, Snapshot
from skyport.timetable.snapshot import TIME
from skyport.units import deadline_at

log = logging.getLogger("skyport.core")
S = JobState


def pool_of(name: str, cap: Capacity, flavors: Sequence[Flavor]) -> Pool:
    """A gate as the timetable engine sees it: capacity, cheapest core-hour, fastest boot."""
    boot_s = min((f.boot_s for f in flavors), default=0.0)
    price = min((f.price_per_hour / f.cpus for f in flavors if f.cpus), default=None)
    return Pool(name=name, capacity=cap.total_cpus, price_per_hour=price, boot_s=boot_s)


def build_snapshot(now: float, queued: Sequence[Job], holding: Sequence[Job],
                   warm: Sequence[RunningJob], pools: Sequence[Pool],
                   allowed: Callable[[Job], tuple[str, ...]],
                   flavors: Mapping[str, Sequence[Flavor]] | None = None) -> Snapshot:
    """The timetable engine's input: queued jobs, jobs holding capacity, the gates.

    ``flavors`` (per gate) price the jobs that set a price cap or prefer cost:
    each gets its own flavor's price per node-hour on each gate
    (``skyport.core.placement``).
    """
    names = {p.name for p in pools}
    return Snapshot(
        now_s=now,
        queued=tuple(_queued(j, allowed(j), flavors or {}) for j in queued),
        running=tuple(
            RunningJob(
                id=j.id,
                owner=j.owner,
                pool=j.gate or "",
                procs=j.spec.total_cpus,
                start_s=(j.started_at or j.submitted_at).timestamp(),
                est_runtime_s=float(j.spec.resources.time_limit_s),
            )
            for j in holding
            if j.gate in names
        ) + tuple(w for w in warm if w.pool in names),
        pools=tuple(pools),
    )


def room(snapshot: Snapshot) -> dict[str, int]:
    """Per gate, the cores that no job's cluster holds (parked warm clusters are room)."""
    left = {p.name: p.capacity for p in snapshot.pools}
    for r in snapshot.running:
        if r.pool in left and not str(r.id).startswith(WARM_PREFIX):
            left[r.pool] -= r.procs
    return left


def deadline_lapses_at(snapshot: Snapshot) -> float | None:
    """When the first queued job's deadline can no longer be met, even on the fastest pool
    (the Core plans again then, so that such a job ends with its reason without waiting
    for some other change)."""
    fastest = min((p.boot_s for p in snapshot.pools), default=0.0)
    # just after: the engine refuses a job only once now + boot + hold is past its deadline;
    # one already past is this pass's business (or waits for a sick gate), not a reason to spin
    lapses = [at for j in snapshot.queued if j.deadline_s is not None
              and (at := j.deadline_s - j.est_runtime_s - fastest + 0.5) > snapshot.now_s]
    return min(lapses, default=None)


def _queued(j: Job, allowed: tuple[str, ...],
            flavors: Mapping[str, Sequence[Flavor]]) -> QueuedJob:
    spec = j.spec
    job = QueuedJob(
        id=j.id,
        owner=j.owner,
        submit_s=j.submitted_at.timestamp(),
        procs=spec.total_cpus,
        est_runtime_s=float(spec.resources.time_limit_s),
        nodes=spec.resources.nodes,
        priority=spec.priority,
        allowed_pools=allowed,
    )
    if spec.max_price_per_hour is None and spec.prefer == TIME and spec.deadline is None:
        return job  # placed as every job always was
    prices = node_prices(spec, flavors)
    # priced only where a flavor holds it: a gate where none does is no bargain
    fitting = tuple(g for g in (allowed or sorted(flavors)) if g in dict(prices))
    return replace(
        job,
        allowed_pools=fitting or allowed,
        max_price_per_hour=spec.max_price_per_hour,
        prefer=spec.prefer,
        deadline_s=deadline_at(spec.deadline, job.submit_s) if spec.deadline else None,
        node_prices=prices,
    )


async def reap(store: JobStore, gates: Mapping[str, Any],
           kept: Callable[[str], set[str]]) -> tuple[list[str], bool]:
    """Delete every cluster whose job is gone, terminal, or holds another cluster.

    ``kept(gate)``: clusters to leave alone (warm ones keep their first job's
    tag).  Returns the clusters deleted and whether a delete failed.
    """
    reaped: list[str] = []
    failed = False
    for name, gate in gates.items():
        try:
            clusters = await gate.list_clusters()
        except Exception:
            continue
        held = kept(name) | {  # a warm cluster keeps its first job's tag
            j.cluster_id for j in store.list(states=[s for s in S if s.has_cluster()])
            if j.gate == name and j.cluster_id}
        for info in clusters:
            try:
                job: Job | None = store.get(info.job_id, events=False)
            except NotFoundError:
                job = None
            keep = info.cluster_id in held or (
                job is not None
                and job.state.has_cluster()
                and job.cluster_id == info.cluster_id
                and job.gate == name
            )
            if not keep:
                try:
                    await gate.delete_cluster(info.cluster_id)
                    reaped.append(info.cluster_id)
                except Exception:
                    log.exception("reaping %s failed", info.cluster_id)
                    failed = True
    return reaped, failed
