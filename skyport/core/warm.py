"""Warm reuse: a finished job's cluster serves the next job of its owner and shape.

On a gate whose ``warm_idle_timeout_s()`` is above 0, a job that ends
SUCCEEDED or FAILED does not lose its cluster: the Core *parks* it (a row in
the store's ``warm_clusters`` table: owner, gate, shape, since when) and the
nodes' agents, told ``action: idle`` by their next heartbeat, kill every
process of the old job, wipe its working directory, drop its token and wait
for their next assignment.  When the scheduler starts a job of the same owner
and shape on that gate, ``try_assign`` hands the cluster over instead of
creating one; the event says so.  A parked cluster past the gate's idle
timeout is deleted (``expire``, every watch pass).

Trust.  An agent's token reaches one job only, so an idle node holds no job
token at all: its heartbeat with the finished job's token (the last call that
token serves; it is revoked once every node has had its answer) brings it an
*idle credential*, one per node, issued once and stored as a hash.  That
credential reaches a single call, ``idle_next``: "my next assignment", which
answers the next job's id and token once the Core has handed the cluster to
a job, and nothing before.  Someone holding it (a process left on the node, a
leaked old token) can therefore reach only the next job given to this cluster,
and that is a job of the same owner, which runs on this very node anyway: a
warm cluster is never handed to another user.  The next job's token travels
from the Core to the node through this call alone, never through the gate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from skyport import tokens
from skyport.errors import ConflictError, NotFoundError, PermissionDeniedError
from skyport.models import Job, JobState
from skyport.store import WarmCluster
from skyport.timetable import RunningJob

if TYPE_CHECKING:
    from skyport.core.service import CoreService

__all__ = ["WarmPool"]

log = logging.getLogger("skyport.core.warm")
S = JobState
_PARKED_FROM = (S.SUCCEEDED, S.FAILED)  # not cancelled, timed out or lost
MAX_WAIT_S = 30.0


@dataclass
class _Handoff:
    """The next job's token, in memory only, until every node has picked it up."""

    job_id: str
    token: str = field(repr=False)
    picked: set[int] = field(default_factory=set)


class WarmPool:
    def __init__(self, core: CoreService) -> None:
        self.core = core
        self.store = core.store
        self._timeouts: dict[str, float] = {}
        self._handoffs: dict[str, _Handoff] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._assigning = asyncio.Lock()

    # -- the gate's setting --------------------------------------------------

    async def idle_timeout(self, gate_name: str) -> float:
        """The gate's idle timeout (0: no warm reuse), asked once per gate."""
        if gate_name in self._timeouts:
            return self._timeouts[gate_name]
        gate = self.core.gates.get(gate_name)
        if gate is None:
            return 0.0
        try:
            # 0.0 from a gate without warm reuse: the runner answers from its features
            value = float(await gate.warm_idle_timeout_s())
        except Exception as exc:  # noqa: BLE001 - ask again next time
            log.warning("gate %s: cannot read its idle timeout: %s", gate_name, exc)
            return 0.0
        self._timeouts[gate_name] = value
        return value

    def _row(self, cluster_id: str) -> WarmCluster | None:
        return next((w for w in self.store.warm_clusters() if w.cluster_id == cluster_id), None)

    # -- a job ends: park its cluster -------------------------------------------

    def park(self, job: Job, idle_timeout_s: float) -> bool:
        """Record ``job``'s cluster as idle; False when it is to be deleted instead."""
        if idle_timeout_s <= 0 or job.state not in _PARKED_FROM or not job.cluster_id \
                or job.gate not in self.core.gates:
            return False
        r = job.spec.resources
        self.store.put_warm(WarmCluster(
            cluster_id=job.cluster_id, gate=job.gate, owner=job.owner, from_job=job.id,
            flavor=job.flavor, price_per_hour=job.price_per_hour, nodes=r.nodes,
            cpus_per_node=r.cpus_per_node, gpus_per_node=r.gpus_per_node, mem_mb=r.mem_mb,
            since=time.time(), idle_hashes=(None,) * r.nodes))
        log.info("job %s ended: its cluster %s stays warm for %gs", job.id, job.cluster_id,
                 idle_timeout_s)
        return True

    def beat(self, job: Job, rank: int) -> dict[str, Any] | None:
        """The heartbeat answer for a node of a parked cluster: its idle credential, once."""
        w = self._row(job.cluster_id or "")
        if w is None or w.from_job != job.id or not 0 <= rank < w.nodes:
            return None
        if w.idle_hashes[rank] is not None:
            return {"action": "idle"}  # already handed out: this caller gets nothing
        credential = tokens.new_token()
        hashes = list(w.idle_hashes)
        hashes[rank] = tokens.hash_token(credential)
        self.store.put_warm(replace(w, idle_hashes=tuple(hashes)))
        if None not in hashes:  # every node has its credential: the old token is done
            self.store.update(job.id, token_hash=None)
        return {"action": "idle", "idle": {"cluster_id": w.cluster_id, "credential": credential}}

    # -- a job starts: hand it a parked cluster -----------------------------------

    async def try_assign(self, job: Job, gate_name: str) -> bool:
        """Give ``job`` a parked cluster of its owner and shape on ``gate_name``, if any."""
        r = job.spec.resources
        shape = (r.nodes, r.cpus_per_node, r.gpus_per_node, r.mem_mb)
        async with self._assigning:
            for w in self.store.warm_clusters():
                if w.assigned_job or w.gate != gate_name or w.owner != job.owner \
                        or (w.nodes, w.cpus_per_node, w.gpus_per_node, w.mem_mb) != shape \
                        or job.spec.flavor not in (None, w.flavor):
                    continue
                info = await self.core.gates[gate_name].describe_cluster(w.cluster_id)
                if info.state != "running" or not all(n.alive for n in info.nodes):
                    await self.discard(w, f"not reusable: {info.reason or info.state}")
                    continue
                return self._assign(job, w)
        return False

    def _assign(self, job: Job, w: WarmCluster) -> bool:
        from skyport.core.service import _Live

        token = tokens.new_token()
        self.store.put_warm(replace(w, assigned_job=job.id))  # a restart knows it went
        try:
            self.core.store.transition(
                job.id, S.PROVISIONING,
                f"reusing warm cluster {w.cluster_id} of job {w.from_job} on gate {w.gate}",
                cluster_id=w.cluster_id, token_hash=tokens.hash_token(token),
                flavor=w.flavor, price_per_hour=w.price_per_hour)
        except (ConflictError, NotFoundError):
            self.store.put_warm(w)  # cancelled meanwhile: the cluster stays idle
            raise
        self.core._live[job.id] = _Live()
        self._handoffs[w.cluster_id] = _Handoff(job.id, token)
        self._wake(w.cluster_id)
        return True

    async def idle_next(self, cluster_id: str, credential: str, rank: int,
                        wait_s: float) -> dict[str, Any]:
        """An idle node's one call: ``assign`` (job id and token), ``wait`` or ``stop``."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        while True:
            w = self._row(cluster_id)
            expected = w.idle_hashes[rank] if w is not None and 0 <= rank < w.nodes else None
            if w is None or expected is None or not tokens.tokens_equal(
                    tokens.hash_token(credential), expected):
                raise PermissionDeniedError("this credential reaches no idle node")
            if w.assigned_job:
                h = self._handoffs.get(cluster_id)
                if h is None or h.job_id != w.assigned_job:
                    return {"action": "stop"}  # the hand-over was lost in a restart
                h.picked.add(rank)
                if len(h.picked) == w.nodes:  # every node has the job: no longer idle
                    self.store.drop_warm(cluster_id)
                    self._handoffs.pop(cluster_id, None)
                return {"action": "assign", "job_id": h.job_id, "token": h.token}
            left = deadline - time.monotonic()
            if left <= 0:
                return {"action": "wait"}
            event = self._events.setdefault(cluster_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                pass

    def _wake(self, cluster_id: str) -> None:
        event = self._events.pop(cluster_id, None)
        if event is not None:
            event.set()

    # -- idle too long, broken, or left behind: delete ------------------------------

    async def discard(self, w: WarmCluster, why: str) -> None:
        self.store.drop_warm(w.cluster_id)
        self._handoffs.pop(w.cluster_id, None)
        self._wake(w.cluster_id)
        self.store.update(w.from_job, token_hash=None)
        log.info("deleting idle cluster %s (last job %s): %s", w.cluster_id, w.from_job, why)
        core = self.core
        core._releases += 1
        core._dirty.set()
        gate = core.gates.get(w.gate)
        if gate is None:
            return
        try:
            await gate.delete_cluster(w.cluster_id)
        except Exception:  # noqa: BLE001 - the reaper deletes it: no row keeps it now
            log.exception("deleting idle cluster %s failed", w.cluster_id)
            core._reap_soon = True

    async def expire(self) -> None:
        """Delete parked clusters past their gate's idle timeout and hand-overs gone stale."""
        now = time.time()
        for w in self.store.warm_clusters():
            if w.assigned_job:
                try:
                    job: Job | None = self.store.get(w.assigned_job, events=False)
                except NotFoundError:
                    job = None
                if job is None or not job.state.has_cluster() or job.cluster_id != w.cluster_id:
                    await self.discard(w, f"job {w.assigned_job} let go of it")
                continue
            timeout = await self.idle_timeout(w.gate)
            if now - w.since >= timeout:
                await self.discard(w, f"idle for {timeout:g}s")

    async def recover(self) -> None:
        """After a restart: a hand-over in flight lost its token in memory; drop it."""
        for w in self.store.warm_clusters():
            if w.assigned_job or w.gate not in self.core.gates:
                await self.discard(w, "the control plane restarted during its hand-over")

    # -- what the scheduler and the reaper see ---------------------------------------

    def holding(self) -> list[RunningJob]:
        """Parked clusters hold their cores until reused or deleted."""
        return [
            RunningJob(id=f"warm:{w.cluster_id}", owner=w.owner, pool=w.gate,
                       procs=w.nodes * w.cpus_per_node, start_s=w.since,
                       est_runtime_s=max(self._timeouts.get(w.gate, 0.0), 1.0))
            for w in self.store.warm_clusters()
            if not w.assigned_job and w.gate in self.core.gates
        ]

    def kept(self, gate_name: str) -> set[str]:
        """Cluster ids on ``gate_name`` that the reaper must leave alone."""
        return {w.cluster_id for w in self.store.warm_clusters() if w.gate == gate_name}
