"""Checkpoints, requeues and the restart policy: the Core's side of surviving failures.

``Recovery`` lives inside the Core (``CoreService.recovery``) and shares its
store, storage and gates.  It does three things:

* coordinates checkpoints.  Whatever asks for one (the ``--checkpoint-every``
  timer, the job through its agent, a user, the time limit drawing near, a
  ``cancel --checkpoint``, a requeue, a preemption notice) opens version N;
  every node's agent learns it from its heartbeat answer, uploads its part
  under ``checkpoints/v<N>/`` and reports the files; once every node has
  reported, the Core writes ``checkpoints/latest.json`` atomically.  A version
  that is not complete within ``CHECKPOINT_TIMEOUT_S`` is dropped, never
  pointed at.
* notices lost nodes.  Besides the heartbeat check of ``CoreService._watch``, it
  asks the gates every ``LIVENESS_INTERVAL_S`` which clusters have dead nodes.
  Once the payload has exited (STAGING_OUT) only node 0, which collects the
  outputs, still matters; a non-zero exit of a job that has lost a node is a
  lost node, not a failure (``failed_exit``).
* applies the restart policy (``lose``): the old attempt's token is revoked
  first (so none of its agents can report for the next attempt), its cluster
  is deleted, then the job goes back to QUEUED with the reason in its events,
  to run on a new cluster from its latest checkpoint, up to the spec's
  ``max_restarts`` (None: the control plane's ``max_node_loss_restarts``,
  3 by default).  After that it ends FAILED, the reason listing every lost
  attempt.  A requeue asked for by a user is not counted against the limit.

Pending work (open checkpoints, preemption notices) lives in memory: after a
control-plane restart an unfinished checkpoint is simply not pointed at, and
a preemption notice in flight is forgotten (the gate's reclaim then shows up
as a lost node).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from skyport.checkpoint import LATEST, parse_signal
from skyport.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    SkyportError,
    ValidationError,
)
from skyport.models import Job, JobState
from skyport.pki import Identity
from skyport.store import utcnow

if TYPE_CHECKING:
    from skyport.core.service import CoreService

__all__ = ["CALLS", "LOST_TAG", "Recovery", "lost_attempts"]

log = logging.getLogger("skyport.core.recovery")
S = JobState

LOST_TAG = "attempt lost: "  # prefix of the QUEUED event of every restart the policy counts
_SEP = " | "
LIVENESS_INTERVAL_S = 2.0
CHECKPOINT_TIMEOUT_S = 120.0
FINAL_MARGIN_S = 10.0  # the last checkpoint is taken this long before the time limit
KEEP_VERSIONS = 2
_LIVE_STATES = (S.STAGING_IN, S.RUNNING, S.STAGING_OUT)
# what the REST routes reach through ``CoreService.recovery_call`` (and the Core actor)
CALLS = ("agent_request", "agent_part", "agent_latest", "user_checkpoint", "checkpoints",
         "requeue", "cancel_after_checkpoint", "debug_kill_node", "debug_preempt")


def lost_attempts(job: Job) -> list[str]:
    """The reasons of the job's restarts that count against ``max_restarts``."""
    return [e.reason[len(LOST_TAG):].split(_SEP)[0] for e in job.events
            if e.state == S.QUEUED and e.reason.startswith(LOST_TAG)]


@dataclass
class _Open:
    """A checkpoint version being uploaded."""

    version: int
    id: str
    reason: str
    ranks_left: set[int]
    opened: float = field(default_factory=time.monotonic)
    files: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _After:
    """What to do once the open checkpoint is complete (or its deadline passes)."""

    action: str  # "requeue" | "cancel"
    reason: str
    deadline: float
    counted: bool = True
    notice: str = ""  # "preempt": told to the agents in their heartbeat answer


class Recovery:
    def __init__(self, core: CoreService) -> None:
        self.core = core
        self._open: dict[str, _Open] = {}
        self._after: dict[str, _After] = {}
        self._versions: dict[str, int] = {}  # highest version opened per job
        self._last_at: dict[str, float] = {}  # wall time of the last checkpoint opened
        self._final: set[str] = set()  # jobs whose before-the-limit checkpoint was opened
        self._signalled: dict[str, set[int]] = {}  # ranks told to signal their payload
        self._losing: set[str] = set()
        self._liveness_at = 0.0

    # -- the restart policy --------------------------------------------------

    def limit(self, job: Job) -> int:
        if job.spec.max_restarts is not None:
            return job.spec.max_restarts
        return self.core.settings.max_node_loss_restarts

    async def lose(self, job_id: str, reason: str, *, counted: bool = True,
                   cluster_id: str | None = None) -> Job | None:
        """The job's attempt is over (node lost, preempted, requeued): requeue it or fail it.

        ``cluster_id``: act only if the job still holds that cluster (a late
        report about an earlier attempt changes nothing).
        """
        if job_id in self._losing:
            return None
        self._losing.add(job_id)
        try:
            job = self.core.store.get(job_id, events=False)
            if job.state.is_terminal() or job.state == S.QUEUED:
                return None
            if cluster_id is not None and job.cluster_id != cluster_id:
                return None
            self._forget(job_id)
            # revoke first: no agent of this attempt can report for the next one
            self.core.store.update(job_id, token_hash=None)
            await self.core._drop_cluster(job)
            job = self.core.store.get(job_id)
            if job.state.is_terminal():
                return job
            before = lost_attempts(job)
            limit = self.limit(job)
            if counted and len(before) >= limit:
                attempts = "; ".join(f"attempt {i}: {r}" for i, r in
                                     enumerate([*before, reason], start=1))
                job = self.core.store.transition(
                    job_id, S.FAILED,
                    f"gave up after {len(before)} restart(s) (max-restarts {limit}): {attempts}")
            else:
                latest = self.latest(job_id)
                source = (f"from checkpoint v{latest['version']}" if latest
                          else "from the start (no checkpoint yet)")
                why = (f"{LOST_TAG}{reason}{_SEP}requeued {source}, restart "
                       f"{len(before) + 1} of {limit}") if counted \
                    else f"{reason}{_SEP}requeued {source}"
                job = self.core.store.transition(job_id, S.QUEUED, why,
                                                 restarts=job.restarts + 1, cluster_id=None)
            return job
        finally:
            self._losing.discard(job_id)

    async def failed_exit(self, job: Job, exit_code: int) -> Job | None:
        """A payload exited non-zero: if its cluster has lost a node, requeue it, not fail it.

        For ``CoreService.agent_exit``, before it ends the job FAILED.  When one node
        of a multi-node job dies, the launcher on the surviving node (``mpiexec``)
        exits with an error at once, usually before the liveness check has seen the
        loss: that exit is the lost node's doing.  Returns the job (requeued, or being
        requeued by the liveness check) if so; None for an ordinary failure.
        """
        if job.nodes < 2 or not job.cluster_id or job.gate not in self.core.gates:
            return None
        try:
            info = await self.core.gates[job.gate or ""].describe_cluster(job.cluster_id)
        except Exception as exc:  # noqa: BLE001 - a sick gate: an ordinary failure, then
            log.warning("job %s: could not look at cluster %s after exit code %d: %s",
                        job.id, job.cluster_id, exit_code, exc)
            return None
        if info.state in ("creating", "running"):
            return None
        after = self._after.get(job.id)
        if after is not None and after.notice == "preempt":
            why = f"{after.reason}: nodes reclaimed before the checkpoint was complete"
        else:
            why = "node lost: " + (info.reason or "the cluster failed")
        why += f" (the payload then exited with code {exit_code})"
        log.info("job %s: %s", job.id, why)
        await self.lose(job.id, why, cluster_id=job.cluster_id)
        return self.core.store.get(job.id)

    def _forget(self, job_id: str) -> None:
        self._open.pop(job_id, None)
        self._after.pop(job_id, None)
        self._final.discard(job_id)
        self._signalled.pop(job_id, None)
        self._last_at.pop(job_id, None)

    # -- checkpoints ---------------------------------------------------------

    def latest(self, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.core.storage.get(job_id, LATEST)))
        except (NotFoundError, ValueError):
            return None
        except SkyportError as exc:
            log.warning("cannot read the latest checkpoint of %s: %s", job_id, exc)
            return None

    def open(self, job: Job, reason: str) -> _Open:
        """The open checkpoint of a running job, opened now if there is none."""
        if job.state != S.RUNNING:
            raise ConflictError(f"job {job.id} is {job.state.value}: only a RUNNING job "
                                "can take a checkpoint")
        current = self._open.get(job.id)
        if current is not None:
            return current
        if job.id not in self._versions:
            latest = self.latest(job.id)
            self._versions[job.id] = int(latest["version"]) if latest else 0
        self._versions[job.id] += 1
        ck = _Open(version=self._versions[job.id], id=secrets.token_hex(4), reason=reason,
                   ranks_left=set(range(job.nodes)))
        self._open[job.id] = ck
        self._last_at[job.id] = time.time()
        log.info("job %s: checkpoint v%d opened (%s)", job.id, ck.version, reason)
        return ck

    def _commit(self, job: Job, ck: _Open) -> dict[str, Any]:
        record = {
            "version": ck.version,
            "time": utcnow().isoformat(),
            "reason": ck.reason,
            "attempt": job.restarts,
            "files": sorted(ck.files, key=lambda f: f["path"]),
            "bytes": sum(int(f["size"]) for f in ck.files),
            "took_s": round(time.monotonic() - ck.opened, 3),
        }
        self.core.storage.put(job.id, LATEST, json.dumps(record, indent=1).encode())
        self._open.pop(job.id, None)
        log.info("job %s: checkpoint v%d complete (%d files, %d bytes)", job.id, ck.version,
                 len(ck.files), record["bytes"])
        self._prune(job.id, ck.version)
        return record

    def _prune(self, job_id: str, version: int) -> None:
        """Delete versions older than the last ``KEEP_VERSIONS`` (best effort)."""
        storage = self.core.storage
        old = version - KEEP_VERSIONS
        if old < 1:
            return
        try:
            path = storage._path(job_id, f"checkpoints/v{old}")
            if storage.fs.exists(path):
                storage.fs.rm(path, recursive=True)
        except Exception as exc:  # noqa: BLE001 - a leftover version only costs space
            log.warning("could not prune checkpoint v%d of %s: %s", old, job_id, exc)

    async def agent_request(self, job_id: str, token: str, reason: str) -> dict[str, Any]:
        job = await self.core.agent_auth(job_id, token)
        ck = self.open(job, reason or "requested by the job")
        return {"version": ck.version, "id": ck.id}

    async def agent_part(self, job_id: str, token: str, version: int, ck_id: str, rank: int,
                         files: list[dict[str, Any]]) -> dict[str, Any]:
        job = await self.core.agent_auth(job_id, token)
        ck = self._open.get(job_id)
        if ck is None or ck.version != version or ck.id != ck_id:
            raise ConflictError(f"job {job_id}: checkpoint v{version} is not open (it was "
                                "completed, dropped, or belongs to an earlier control plane)")
        prefix = f"v{version}/shared/" if rank == 0 else f"v{version}/nodes/{rank}/"
        for f in files:
            path = str(f.get("path", ""))
            ok = path.startswith((prefix, f"v{version}/nodes/{rank}/"))
            if not ok or ".." in path.split("/"):
                raise ValidationError("files", path, f"paths under {prefix} or "
                                      f"v{version}/nodes/{rank}/")
        ck.files.extend({"path": str(f["path"]), "size": int(f.get("size", 0))} for f in files)
        ck.ranks_left.discard(rank)
        if ck.ranks_left:
            return {"committed": False, "version": version}
        record = self._commit(job, ck)
        await self._run_after(job_id, f"checkpoint v{version} saved")
        return {"committed": True, "version": version, "latest": record}

    async def agent_latest(self, job_id: str, token: str) -> dict[str, Any]:
        await self.core.agent_auth(job_id, token)
        ck = self._open.get(job_id)
        # where this attempt's logs go on: an earlier attempt's output stays in front
        sizes = {s: self.core.storage.size(job_id, f"logs/{s}") for s in ("stdout", "stderr")}
        return {"latest": self.latest(job_id), "pending": ck.version if ck else None,
                "log_sizes": sizes}

    def beat_answer(self, job: Job, rank: int, answer: dict[str, Any]) -> dict[str, Any]:
        """Add checkpoint work, the preemption notice and the --signal to a heartbeat answer."""
        ck = self._open.get(job.id)
        if ck is not None and rank in ck.ranks_left:
            answer["checkpoint"] = {"version": ck.version, "id": ck.id}
        after = self._after.get(job.id)
        if after is not None and after.notice:
            answer["notice"] = after.notice
        if job.spec.signal and job.state == S.RUNNING and job.started_at is not None:
            name, before_s = parse_signal(job.spec.signal)
            due = job.started_at + timedelta(
                seconds=max(0, job.spec.resources.time_limit_s - before_s))
            told = self._signalled.setdefault(job.id, set())
            if utcnow() >= due and rank not in told:
                told.add(rank)
                answer["signal"] = name
        return answer

    # -- what users and admins ask for ----------------------------------------

    async def user_checkpoint(self, who: Identity, job_id: str) -> dict[str, Any]:
        job = self.core._visible(who, job_id)
        ck = self.open(job, f"requested by {who.username}")
        return {"version": ck.version, "id": ck.id}

    async def checkpoints(self, who: Identity, job_id: str) -> dict[str, Any]:
        self.core._visible(who, job_id)
        ck = self._open.get(job_id)
        return {"latest": self.latest(job_id), "pending": ck.version if ck else None}

    async def requeue(self, who: Identity, job_id: str, wait_s: float = 60.0) -> Job:
        """Requeue a job by hand; a RUNNING one takes a checkpoint first (up to ``wait_s``)."""
        job = self.core._visible(who, job_id)
        if not job.state.has_cluster():
            raise ConflictError(f"job {job_id} is {job.state.value}: only a job that holds "
                                "a cluster can be requeued")
        reason = f"requeued by {who.username}"
        if job.state == S.RUNNING:
            self._then(job, _After("requeue", reason, time.monotonic() + wait_s, counted=False))
            return self.core.store.get(job_id)
        await self.lose(job_id, reason, counted=False)
        return self.core.store.get(job_id)

    async def cancel_after_checkpoint(self, who: Identity, job_id: str,
                                      wait_s: float = 60.0) -> Job:
        job = self.core._visible(who, job_id)
        if job.state != S.RUNNING:
            return await self.core.cancel(who, job_id)
        self._then(job, _After("cancel", f"cancelled by {who.username}",
                               time.monotonic() + wait_s))
        return self.core.store.get(job_id)

    async def debug_kill_node(self, who: Identity, job_id: str, node: int | None) -> dict:
        job = self._admin_job(who, job_id)
        rank = job.nodes - 1 if node is None else node
        if not 0 <= rank < job.nodes:
            raise ValidationError("node", node, f"0..{job.nodes - 1}")
        gate = self.core.gates[job.gate or ""]
        killed = await gate.ex_kill_node(job.cluster_id, rank)
        self._liveness_at = 0.0  # look at once
        return {"job_id": job_id, "cluster_id": job.cluster_id, "node": rank, "killed": killed}

    async def debug_preempt(self, who: Identity, job_id: str, notice_s: float = 20.0) -> dict:
        """A preemption notice: checkpoint, requeue; the gate reclaims the nodes later."""
        job = self._admin_job(who, job_id)
        gate = self.core.gates[job.gate or ""]
        # the "cloud" takes the nodes back a little after the notice's deadline
        await gate.ex_preempt(job.cluster_id, notice_s + 5.0)
        reason = f"preempted (notice of {notice_s:g}s)"
        if job.state == S.RUNNING:
            self._then(job, _After("requeue", reason, time.monotonic() + notice_s,
                                   notice="preempt"))
        elif job.state != S.STAGING_OUT:  # collecting outputs: it may be done before the reclaim
            await self.lose(job_id, reason)
        return {"job_id": job_id, "cluster_id": job.cluster_id, "notice_s": notice_s}

    def _admin_job(self, who: Identity, job_id: str) -> Job:
        if not who.is_admin:
            raise PermissionDeniedError("only an admin may inject failures")
        job = self.core.store.get(job_id, events=False)
        if not job.state.has_cluster() or not job.cluster_id or job.gate not in self.core.gates:
            raise ConflictError(f"job {job_id} is {job.state.value}: it holds no cluster")
        return job

    def _then(self, job: Job, after: _After) -> None:
        if job.id in self._after:
            doing = "cancelled" if self._after[job.id].action == "cancel" else "requeued"
            raise ConflictError(f"job {job.id} is already being {doing}")
        self._after[job.id] = after
        self.open(job, after.reason)

    async def _run_after(self, job_id: str, how: str) -> None:
        after = self._after.pop(job_id, None)
        if after is None:
            return
        job = self.core.store.get(job_id, events=False)
        if job.state.is_terminal():
            return
        if after.action == "requeue" and job.state == S.STAGING_OUT:
            # the payload ended while its checkpoint was taken: its outcome stands, and
            # running it again from the checkpoint would run its last steps twice
            log.info("job %s: not %s: the payload has already exited", job_id, after.reason)
            return
        if after.action == "cancel":
            self._forget(job_id)
            try:
                job = self.core.store.transition(job_id, S.CANCELLED, f"{after.reason} ({how})")
            except ConflictError:
                return
            await self.core._drop_cluster(job)
        else:
            await self.lose(job_id, f"{after.reason} ({how})", counted=after.counted)

    # -- the watch (called from the Core's loop, about once a second) ----------

    async def watch(self) -> None:
        now = time.monotonic()
        for job_id, after in list(self._after.items()):
            if now >= after.deadline:
                latest = self.latest(job_id)
                await self._run_after(job_id, "checkpoint not complete in time; latest is "
                                      + (f"v{latest['version']}" if latest else "none"))
        for job_id, ck in list(self._open.items()):
            if now - ck.opened > CHECKPOINT_TIMEOUT_S:
                log.warning("job %s: checkpoint v%d dropped (nodes %s never reported)",
                            job_id, ck.version, sorted(ck.ranks_left))
                self._open.pop(job_id, None)
        running = self.core.store.list(states=[S.RUNNING])
        wall = time.time()
        for job in running:
            self._schedule_checkpoints(job, wall)
        if now - self._liveness_at >= LIVENESS_INTERVAL_S:
            self._liveness_at = now
            await self._check_liveness()

    def _schedule_checkpoints(self, job: Job, wall: float) -> None:
        if job.started_at is None or job.id in self._open:
            return
        started = job.started_at.timestamp()
        limit = job.spec.resources.time_limit_s
        margin = min(FINAL_MARGIN_S, limit / 4)
        try:
            if job.id not in self._final and wall >= started + limit - margin:
                self._final.add(job.id)
                self.open(job, "time limit near")
            elif (every := job.spec.checkpoint_every_s) and \
                    wall - self._last_at.get(job.id, started) >= every:
                self.open(job, f"every {every}s")
        except ConflictError:
            pass

    async def _check_liveness(self) -> None:
        jobs = self.core.store.list(states=list(_LIVE_STATES))
        if not jobs:
            return
        clusters: dict[str, Any] = {}
        listed: set[str] = set()
        for name, gate in self.core.gates.items():
            try:
                for info in await gate.list_clusters():
                    clusters[info.cluster_id] = info
                listed.add(name)
            except Exception as exc:  # noqa: BLE001 - a sick gate: the heartbeat check remains
                log.warning("liveness: gate %s did not list its clusters: %s", name, exc)
        for job in jobs:
            if job.gate not in listed or not job.cluster_id:
                continue
            info = clusters.get(job.cluster_id)
            if info is not None and info.state in ("creating", "running"):
                continue
            if job.state == S.STAGING_OUT and info is not None and \
                    any(n.rank == 0 and n.alive for n in info.nodes):
                # the payload has exited and node 0 alone collects the outputs: the other
                # nodes are no longer needed (a non-zero exit caused by their loss is
                # requeued by ``failed_exit`` when node 0 reports it)
                continue
            after = self._after.get(job.id)
            if after is not None and after.notice == "preempt":
                why = f"{after.reason}: nodes reclaimed before the checkpoint was complete"
            else:
                why = "node lost: " + (info.reason if info is not None and info.reason
                                       else "the gate no longer has the cluster")
            log.info("job %s: %s", job.id, why)
            await self.lose(job.id, why, cluster_id=job.cluster_id)
