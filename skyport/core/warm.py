"""Warm reuse: a finished job's cluster serves the next job of its owner and shape.

A plain component of the job machine (``skyport.core.machine``): no I/O, no
clock.  On a gate whose idle timeout is above 0, a job that ends SUCCEEDED or
FAILED does not lose its cluster: the machine *parks* it (a row of the
store's ``warm_clusters`` table, mirrored here: owner, gate, shape, since
when) and the nodes' agents, told ``action: idle`` by their next heartbeat,
kill every process of the old job, wipe its working directory, drop its
token and wait for their next assignment.  When the scheduler starts a job of
the same owner and shape on that gate, the cluster is handed over instead of
created; the event says so.  A parked cluster past the gate's idle timeout is
deleted.

Trust.  An agent's token reaches one job only, so an idle node holds no job
token at all: its heartbeat with the finished job's token (the last call that
token serves; it is revoked once every node has had its answer) brings it an
*idle credential*, one per node, issued once and stored as a hash.  That
credential reaches a single call, ``idle_next``: "my next assignment", which
answers the next job's id and token once the cluster was handed to a job, and
nothing before.  Someone holding it can therefore reach only the next job
given to this cluster, and that is a job of the same owner, which runs on this
very node anyway: a warm cluster is never handed to another user.  The next
job's token lives in memory only, until every node has picked it up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from skyport.models import Job, JobState
from skyport.store import WarmCluster
from skyport.timetable import RunningJob

__all__ = ["PARKED_FROM", "WARM_PREFIX", "WarmBook"]

S = JobState
PARKED_FROM = (S.SUCCEEDED, S.FAILED)  # not cancelled, timed out or lost
MAX_WAIT_S = 30.0
WARM_PREFIX = "warm:"  # a parked cluster's id as the scheduler sees it


@dataclass
class _Handoff:
    """The next job's token, in memory only, until every node has picked it up."""

    job_id: str
    token: str = field(repr=False)
    picked: set[int] = field(default_factory=set)


class WarmBook:
    def __init__(self, idle_timeouts: dict[str, float] | None = None) -> None:
        self.idle_timeouts: dict[str, float] = dict(idle_timeouts or {})
        self.rows: dict[str, WarmCluster] = {}
        self._handoffs: dict[str, _Handoff] = {}
        # cluster -> the job it was offered to alone, until that job's inputs are staged
        self.promised: dict[str, str] = {}

    def idle_timeout(self, gate: str | None) -> float:
        return self.idle_timeouts.get(gate or "", 0.0)

    def load(self, rows: list[WarmCluster]) -> None:
        self.rows = {w.cluster_id: w for w in rows}

    def put(self, w: WarmCluster) -> WarmCluster:
        self.rows[w.cluster_id] = w
        return w

    def drop(self, cluster_id: str) -> WarmCluster | None:
        self._handoffs.pop(cluster_id, None)
        self.promised.pop(cluster_id, None)
        return self.rows.pop(cluster_id, None)

    def park(self, job: Job, now: float) -> WarmCluster | None:
        """The row that parks ``job``'s cluster, or None when it is to be deleted."""
        if self.idle_timeout(job.gate) <= 0 or job.state not in PARKED_FROM \
                or not job.cluster_id or not job.gate:
            return None
        r = job.spec.resources
        return self.put(WarmCluster(
            cluster_id=job.cluster_id, gate=job.gate, owner=job.owner, from_job=job.id,
            flavor=job.flavor, price_per_hour=job.price_per_hour, nodes=r.nodes,
            cpus_per_node=r.cpus_per_node, gpus_per_node=r.gpus_per_node, mem_mb=r.mem_mb,
            since=now, idle_hashes=(None,) * r.nodes))

    def parked_for(self, job: Job, rank: int) -> WarmCluster | None:
        """The parked row of ``job``'s cluster, if node ``rank`` belongs to it."""
        w = self.rows.get(job.cluster_id or "")
        if w is None or w.from_job != job.id or not 0 <= rank < w.nodes:
            return None
        return w

    def candidates(self, job: Job, gate: str) -> list[str]:
        """Parked clusters of ``job``'s owner and shape on ``gate``, oldest first."""
        r = job.spec.resources
        shape = (r.nodes, r.cpus_per_node, r.gpus_per_node, r.mem_mb)
        return [
            w.cluster_id for w in sorted(self.rows.values(), key=lambda w: w.since)
            if not w.assigned_job and w.gate == gate and w.owner == job.owner
            and self.promised.get(w.cluster_id, job.id) == job.id
            and (w.nodes, w.cpus_per_node, w.gpus_per_node, w.mem_mb) == shape
            and job.spec.flavor in (None, w.flavor)
        ]

    def promise(self, cluster_id: str, job_id: str) -> None:
        self.promised[cluster_id] = job_id

    def unpromise(self, job_id: str) -> None:
        for cluster_id in [c for c, j in self.promised.items() if j == job_id]:
            del self.promised[cluster_id]

    def assign(self, cluster_id: str, job_id: str, token: str) -> WarmCluster:
        self.promised.pop(cluster_id, None)
        w = self.put(replace(self.rows[cluster_id], assigned_job=job_id))
        self._handoffs[cluster_id] = _Handoff(job_id, token)
        return w

    def handoff(self, cluster_id: str) -> _Handoff | None:
        return self._handoffs.get(cluster_id)

    def holding(self) -> list[RunningJob]:
        """Parked clusters hold their cores until reused or deleted."""
        return [
            RunningJob(id=f"{WARM_PREFIX}{w.cluster_id}", owner=w.owner, pool=w.gate,
                       procs=w.nodes * w.cpus_per_node, start_s=w.since,
                       est_runtime_s=max(self.idle_timeout(w.gate), 1.0))
            for w in self.rows.values() if not w.assigned_job
        ]

    def settle(self, waiting: Sequence[tuple[Job, tuple[str, ...]]], room: Mapping[str, int]
               ) -> tuple[list[tuple[Job, str, str]], list[WarmCluster]]:
        """Parked clusters for the jobs the scheduler could not start: reuse or evict.

        The scheduler counts a parked cluster as held, so without this a queued
        job would wait for the idle timeout: one of the same owner and shape
        for a cluster that is its for the taking, any other for cores that
        nobody uses.  ``waiting`` is in the scheduler's order, so an earlier job
        is served first.  A job takes the oldest parked cluster of its owner
        and shape on a gate it may use (``(job, gate, cluster)``); otherwise,
        on the first gate whose cores not held by jobs (``room``) would fit it,
        it has just enough parked clusters deleted (oldest first) and those
        cores are then its: later jobs neither reuse nor evict them, so a
        stream of one owner's small jobs cannot starve a wide job queued
        before them.  A job too wide for the room left holds nothing back.
        """
        parked = sorted((w for w in self.rows.values() if not w.assigned_job),
                        key=lambda w: (w.since, w.cluster_id))
        taken: set[str] = set()
        left = dict(room)
        for w in parked:
            if w.cluster_id in self.promised and w.gate in left:  # a job is on its way to it
                taken.add(w.cluster_id)
                left[w.gate] -= _cores(w)
        reuses: list[tuple[Job, str, str]] = []
        evicted: list[WarmCluster] = []
        for job, allowed in waiting:
            gates = [g for g in sorted(left) if not allowed or g in allowed]
            mine = next(((g, c) for g in gates for c in self.candidates(job, g)
                         if c not in taken), None)
            if mine is not None:
                gate, cluster_id = mine
                taken.add(cluster_id)
                left[gate] -= _cores(self.rows[cluster_id])
                reuses.append((job, gate, cluster_id))
                continue
            procs = job.spec.total_cpus
            fits = next((g for g in gates if procs <= left[g]), None)
            if fits is None:
                continue
            here = [w for w in parked if w.gate == fits and w.cluster_id not in taken]
            short = procs - (left[fits] - sum(_cores(w) for w in here))
            for w in here:
                if short <= 0:
                    break
                taken.add(w.cluster_id)
                evicted.append(w)
                short -= _cores(w)
            left[fits] -= procs
        return reuses, evicted

    def kept(self, gate: str) -> set[str]:
        """Cluster ids on ``gate`` that the reaper must leave alone."""
        return {w.cluster_id for w in self.rows.values() if w.gate == gate}


def _cores(w: WarmCluster) -> int:
    return w.nodes * w.cpus_per_node
