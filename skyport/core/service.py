"""The Core's logic, as a plain async class; ``skyport.core.actor`` is its Ray shell.

The Core is the only writer of the job store.  Everything that changes a job
goes through one of its methods, which writes the transition (with its event)
first and acts second.  A background loop re-plans when something changed
(batched: a burst of submissions causes a handful of passes), starts the jobs
the timetable says can start now, and watches running jobs for lost nodes,
overrun time limits and stuck provisioning.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import posixpath
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from skyport import tokens
from skyport.core.launch_calls import LaunchCalls
from skyport.core.launches import LaunchRegistry
from skyport.core.recovery import Recovery
from skyport.core.views import CoreViews
from skyport.core.warm import WarmPool
from skyport.errors import (
    CapacityError,
    ConflictError,
    GateError,
    NotFoundError,
    PermissionDeniedError,
    SkyportError,
    StorageError,
    ValidationError,
)
from skyport.gate import Capacity, ClusterInfo, ClusterRequest, Flavor
from skyport.models import Job, JobSpec, JobState
from skyport.pki import Identity
from skyport.scheduler import PlanEntry, UsageCharge
from skyport.storage import JobStorage
from skyport.store import JobStore, utcnow
from skyport.timetable import Pool, QueuedJob, RunningJob, Snapshot

log = logging.getLogger("skyport.core")

PAYLOAD_INPUT = "skyport-payload.pkl"
S = JobState


class GatePort(Protocol):
    """What the Core needs of a gate (a Ray actor handle is wrapped into this)."""

    async def flavors(self) -> list[Flavor]: ...
    async def capacity(self) -> Capacity: ...
    async def can_ever_fit(
        self,
        nodes: int,
        cpus_per_node: int,
        gpus_per_node: int,
        mem_mb: int | None,
        flavor: str | None,
    ) -> str | None: ...
    async def create_cluster(self, request: ClusterRequest) -> ClusterInfo: ...
    async def describe_cluster(self, cluster_id: str) -> ClusterInfo: ...
    async def delete_cluster(self, cluster_id: str) -> None: ...
    async def list_clusters(self) -> list[ClusterInfo]: ...


Planner = Callable[[Snapshot, list[UsageCharge]], Awaitable[list[PlanEntry]]]


@dataclass
class CoreSettings:
    control_url: str
    ca_pem: str
    heartbeat_timeout_s: float = 60.0
    provisioning_timeout_s: float = 180.0
    time_limit_grace_s: float = 30.0
    max_node_loss_restarts: int = 3
    replan_interval_s: float = 0.2
    reap_interval_s: float = 60.0
    reap_retry_s: float = 3.0  # a failed delete is tried again this soon
    gate_failure_memory_s: float = 600.0  # a gate that failed a job is avoided this long


@dataclass
class _Live:
    """In-memory facts about a job holding a cluster (rebuilt after a restart)."""

    hellos: dict[int, str] = field(default_factory=dict)
    last_seen: dict[int, float] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)


class CoreService(CoreViews, LaunchCalls):
    def __init__(
        self,
        store: JobStore,
        storage: JobStorage,
        gates: dict[str, GatePort],
        planner: Planner,
        settings: CoreSettings,
        policy_name: str = "fcfs",
    ) -> None:
        self.store = store
        self.storage = storage
        self.gates = gates
        self.planner = planner
        self.settings = settings
        self.policy_name = policy_name
        self.started_at = utcnow()
        self._live: dict[str, _Live] = {}
        self._plan: dict[str, PlanEntry] = {}
        self._dirty = asyncio.Event()
        store.on_change.append(lambda _job_id, _state: self._dirty.set())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._passes = 0
        self._releases = 0  # clusters dropped so far: capacity may have come free
        self._capacity_wait: dict[str, int] = {}
        self._charges: list[UsageCharge] = []  # usage of jobs ended since the last pass
        self._gate_failures: dict[str, dict[str, float]] = {}  # job -> gate -> when it failed
        self._reap_soon = False  # a delete failed: reap before reap_interval_s is up
        self.launches = LaunchRegistry()
        self._launch_events: dict[str, asyncio.Event] = {}
        self.warm = WarmPool(self)
        self.recovery = Recovery(self)

    # -- start-up ------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Recover from whatever the last control plane left, then run the loop."""
        recovered = await self._recover()
        await self.warm.recover()
        await self.reap()
        self._loop_task = asyncio.create_task(self._run())
        self._dirty.set()
        return recovered

    async def _recover(self) -> dict[str, Any]:
        requeued, adopted = [], []
        for job in self.store.list(states=[s for s in S if not s.is_terminal()]):
            if job.state in (S.SCHEDULED, S.PROVISIONING):
                await self._drop_cluster(job)
                self.store.transition(
                    job.id, S.QUEUED, "control plane restarted before the cluster was ready"
                )
                requeued.append(job.id)
            elif job.state.has_cluster():
                alive = await self._cluster_alive(job)
                if alive:
                    live = self._live.setdefault(job.id, _Live())
                    for rank, name in enumerate(job.node_names):
                        live.hellos[rank] = name
                        live.last_seen[rank] = time.monotonic()
                    adopted.append(job.id)
                else:
                    await self._requeue_lost(job, "cluster lost while the control plane was down")
                    requeued.append(job.id)
        return {"requeued": requeued, "adopted": adopted}

    async def _cluster_alive(self, job: Job) -> bool:
        gate = self.gates.get(job.gate or "")
        if gate is None or not job.cluster_id:
            return False
        try:
            info = await gate.describe_cluster(job.cluster_id)
        except SkyportError:
            return False
        return info.state in ("creating", "running") and all(n.alive for n in info.nodes)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        for t in list(self._tasks):
            t.cancel()

    # -- user calls ----------------------------------------------------------

    async def submit(self, who: Identity, spec: JobSpec, payload_b64: str | None = None) -> Job:
        await self._validate(spec)
        payload = None
        if spec.kind == "function":
            if not payload_b64:
                raise ValidationError("payload_b64", None, "a function job needs its payload")
            try:
                payload = base64.b64decode(payload_b64, validate=True)
            except ValueError as exc:
                raise ValidationError("payload_b64", "<not base64>", "base64 text") from exc
        elif payload_b64:
            raise ValidationError("payload_b64", "<payload>", "only function jobs carry one")
        job_id = self._new_job_id()
        # files first: a job that is in the store always has its script
        self.storage.put(job_id, "script.sh", spec.script.encode())
        if payload is not None:
            self.storage.put(job_id, f"inputs/{PAYLOAD_INPUT}", payload)
        job = self.store.add(job_id, who.username, spec)
        return job

    def _new_job_id(self) -> str:
        # short enough to type; drawn again on a clash, before any file is written
        while True:
            job_id = secrets.token_hex(4)
            try:
                self.store.get(job_id, events=False)
            except NotFoundError:
                return job_id

    async def _validate(self, spec: JobSpec) -> None:
        if spec.gate is not None and spec.gate not in self.gates:
            raise ValidationError("gate", spec.gate, "one of: " + ", ".join(sorted(self.gates)))
        candidates = [spec.gate] if spec.gate else sorted(self.gates)
        r = spec.resources
        reasons = []
        for name in candidates:
            why = await self.gates[name].can_ever_fit(
                r.nodes, r.cpus_per_node, r.gpus_per_node, r.mem_mb, spec.flavor
            )
            if why is None:
                break
            reasons.append(why)
        else:
            raise ValidationError(
                "resources",
                f"{r.nodes} nodes x {r.cpus_per_node} cpus, {r.gpus_per_node} gpus"
                + (f", {r.mem_mb} MB" if r.mem_mb else "")
                + (f", flavor {spec.flavor}" if spec.flavor else ""),
                "no gate can ever run this: " + " | ".join(reasons),
            )
        names = set()
        for url in spec.inputs:
            base = posixpath.basename(url.rstrip("/"))
            if not base or base == PAYLOAD_INPUT:
                raise ValidationError("input", url, "a URL that names a file")
            if base in names:
                raise ValidationError("input", url, "inputs with distinct file names")
            names.add(base)
            why = self.storage.check_input(url)
            if why is not None:
                raise ValidationError("input", url, f"a URL that exists and can be read ({why})")
        if spec.layout.mpi != "mpich" or spec.layout.ranks_per_node > 1 or r.nodes > 1:
            from skyport.launch.mpi import missing_mpi  # a parallel layout needs its MPI

            if why := missing_mpi(spec.layout.mpi):
                raise ValidationError("mpi", spec.layout.mpi, f"an installed MPI: {why}")

    def _visible(self, who: Identity, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.owner != who.username and not who.is_admin:
            # the same answer as for a job that does not exist: no probing of ids
            raise NotFoundError(f"no job {job_id}")
        return self._with_plan(job)

    async def get(self, who: Identity, job_id: str) -> Job:
        return self._visible(who, job_id)

    async def jobs(
        self, who: Identity, all_users: bool = False, states: list[JobState] | None = None
    ) -> list[Job]:
        if all_users and not who.is_admin:
            raise PermissionDeniedError("only an admin may list every user's jobs")
        owner = None if all_users else who.username
        return [self._with_plan(j) for j in self.store.list(owner=owner, states=states)]

    async def cancel(self, who: Identity, job_id: str) -> Job:
        job = self._visible(who, job_id)
        if job.state.is_terminal():
            raise ConflictError(f"job {job_id} is already {job.state.value}")
        job = self.store.transition(job_id, S.CANCELLED, f"cancelled by {who.username}")
        self._spawn(self._drop_cluster(job))
        return job

    def _with_plan(self, job: Job) -> Job:
        entry = self._plan.get(job.id)
        if entry is not None and job.state == S.QUEUED:
            job.planned_start_at = datetime.fromtimestamp(entry.start_s, UTC)
            job.planned_start_predicted = entry.predicted
        return job

    # -- agent calls ---------------------------------------------------------

    async def agent_auth(self, job_id: str, token: str) -> Job:
        expected = self.store.token_hash(job_id)
        if expected is None or not tokens.tokens_equal(tokens.hash_token(token), expected):
            raise PermissionDeniedError(f"this token does not reach job {job_id}")
        return self.store.get(job_id, events=False)

    async def agent_hello(self, job_id: str, token: str, rank: int, node_name: str) -> dict:
        job = await self.agent_auth(job_id, token)
        if not 0 <= rank < job.spec.resources.nodes:
            raise ValidationError("rank", rank, f"0..{job.spec.resources.nodes - 1}")
        live = self._live.setdefault(job_id, _Live())
        live.hellos[rank] = node_name
        live.last_seen[rank] = time.monotonic()
        if job.state == S.PROVISIONING and len(live.hellos) == job.spec.resources.nodes:
            names = [live.hellos[r] for r in range(job.spec.resources.nodes)]
            job = self.store.transition(
                job_id, S.STAGING_IN, "every node's agent called in", node_names=names
            )
        return {
            "job": job.summary(),
            "num_nodes": job.spec.resources.nodes,
            "restart_count": job.restarts,
        }

    async def agent_heartbeat(self, job_id: str, token: str, rank: int) -> dict[str, Any]:
        job = await self.agent_auth(job_id, token)
        live = self._live.get(job_id)
        if live is not None:
            live.last_seen[rank] = time.monotonic()
        answer: dict[str, Any] = {"state": job.state.value}
        if job.state.is_terminal() or not job.state.has_cluster():
            answer.update(self.warm.beat(job, rank) or {"action": "stop"})
        else:
            answer["action"] = "wait" if job.state == S.PROVISIONING else "run"
            if await self.warm.idle_timeout(job.gate or "") > 0:
                answer["warm"] = True  # node 0 waits for its idle answer after the exit
        return self.recovery.beat_answer(job, rank, answer)

    async def agent_state(self, job_id: str, token: str, state: JobState, reason: str) -> Job:
        await self.agent_auth(job_id, token)
        if state not in (S.RUNNING, S.STAGING_OUT):
            raise ValidationError("state", state.value, "RUNNING or STAGING_OUT")
        return self.store.transition(job_id, state, reason or f"agent: {state.value.lower()}")

    async def agent_exit(
        self, job_id: str, token: str, exit_code: int, timed_out: bool, reason: str
    ) -> Job:
        job = await self.agent_auth(job_id, token)
        if job.state.is_terminal():
            return job
        if exit_code != 0 and not timed_out:  # a lost node's doing? then requeue, not fail
            lost = await self.recovery.failed_exit(job, exit_code)
            if lost is not None:
                return lost
        idle_timeout_s = await self.warm.idle_timeout(job.gate or "")  # no await after the end
        if timed_out:
            new, why = S.TIMEOUT, reason or "time limit reached"
        elif exit_code == 0:
            new, why = S.SUCCEEDED, reason or "exit code 0"
        else:
            new, why = S.FAILED, reason or f"exit code {exit_code}"
        if new == S.SUCCEEDED and job.state != S.STAGING_OUT:
            self.store.transition(job_id, S.STAGING_OUT, "collecting outputs")
        job = self.store.transition(job_id, new, why, exit_code=exit_code)
        if self.warm.park(job, idle_timeout_s):
            self._let_go(job)  # the cluster stays, idle, for the next job of its shape
        else:
            self._spawn(self._drop_cluster(job))
        return job

    # -- the loop ------------------------------------------------------------

    async def _run(self) -> None:
        last_watch = last_reap = 0.0
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=1.0)
            except TimeoutError:
                pass
            try:
                if self._dirty.is_set():
                    self._dirty.clear()
                    await self.schedule_pass()
                now = time.monotonic()
                if now - last_watch >= 1.0:
                    last_watch = now
                    await self._watch()
                due = self.settings.reap_retry_s if self._reap_soon \
                    else self.settings.reap_interval_s
                if now - last_reap >= due:
                    last_reap = now
                    self._reap_soon = False
                    await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("core loop pass failed; going on")
            # batch: whatever arrives during this pause is planned together
            await asyncio.sleep(self.settings.replan_interval_s)

    async def schedule_pass(self) -> None:
        self._passes += 1
        queued = self.store.list(states=[S.QUEUED])
        holding = self.store.list(states=[s for s in S if s.has_cluster() or s == S.SCHEDULED])
        pools = []
        for name, gate in sorted(self.gates.items()):
            try:
                cap = await gate.capacity()
                flavors = await gate.flavors()
            except Exception:
                continue  # a sick gate gets no work this pass
            boot_s = min((f.boot_s for f in flavors), default=0.0)
            price = min((f.price_per_hour / f.cpus for f in flavors if f.cpus), default=None)
            pools.append(
                Pool(name=name, capacity=cap.total_cpus, price_per_hour=price, boot_s=boot_s)
            )
        now = time.time()
        snapshot = Snapshot(
            now_s=now,
            queued=tuple(
                QueuedJob(
                    id=j.id,
                    owner=j.owner,
                    submit_s=j.submitted_at.timestamp(),
                    procs=j.spec.total_cpus,
                    est_runtime_s=float(j.spec.resources.time_limit_s),
                    nodes=j.spec.resources.nodes,
                    priority=j.spec.priority,
                    allowed_pools=self._allowed_gates(j),
                )
                for j in queued
            ),
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
                if j.gate in self.gates
            ) + tuple(self.warm.holding()),
            pools=tuple(pools),
        )
        charges, self._charges = self._charges, []
        plan = await self.planner(snapshot, charges)
        self._plan = {e.job_id: e for e in plan}
        for entry in plan:
            if not entry.start_now:
                continue
            if self._capacity_wait.get(entry.job_id) == self._releases:
                continue  # the gate said no; wait until some cluster is released
            try:
                job = self.store.transition(
                    entry.job_id, S.SCHEDULED, f"planned on gate {entry.pool}", gate=entry.pool
                )
            except ConflictError:
                continue  # cancelled meanwhile
            self._spawn(self._begin(job, entry.pool))

    async def _begin(self, job: Job, gate_name: str) -> None:
        try:
            await self._provision(job, gate_name)
        except CapacityError as exc:
            self._capacity_wait[job.id] = self._releases
            job = self.store.get(job.id, events=False)
            if job.state in (S.SCHEDULED, S.PROVISIONING):
                await self._drop_cluster(job)
                self.store.transition(job.id, S.QUEUED, f"waiting for capacity: {exc.message}")
        except GateError as exc:
            job = self.store.get(job.id, events=False)
            await self._drop_cluster(job)
            if job.state.is_terminal():
                return
            self._gate_failures.setdefault(job.id, {})[gate_name] = time.monotonic()
            if job.spec.gate is None and self._allowed_gates(job):
                self.store.transition(
                    job.id, S.QUEUED, f"gate {gate_name} failed: {exc.message}; "
                    "re-planned on another gate", cluster_id=None)
            else:
                self._gate_failures.pop(job.id, None)
                self.store.transition(job.id, S.FAILED, exc.message)
        except StorageError as exc:
            job = self.store.get(job.id, events=False)
            await self._drop_cluster(job)
            if not job.state.is_terminal():
                self.store.transition(job.id, S.FAILED, exc.message)
        except ConflictError:
            pass  # cancelled meanwhile
        except Exception as exc:
            log.exception("provisioning job %s failed", job.id)
            job = self.store.get(job.id, events=False)
            await self._drop_cluster(job)
            if not job.state.is_terminal():
                self.store.transition(job.id, S.FAILED, f"provisioning failed: {exc}")

    async def _provision(self, job: Job, gate_name: str) -> None:
        gate = self.gates[gate_name]
        for url in job.spec.inputs:
            self.storage.copy_in(job.id, url, "inputs/" + posixpath.basename(url.rstrip("/")))
        if await self.warm.try_assign(job, gate_name):
            self._gate_failures.pop(job.id, None)
            return
        token = tokens.new_token()
        cluster_id = f"{job.id}-{job.restarts}"
        r = job.spec.resources
        job = self.store.transition(
            job.id,
            S.PROVISIONING,
            f"creating a {r.nodes}-node cluster on gate {gate_name}",
            cluster_id=cluster_id,
            token_hash=tokens.hash_token(token),
        )
        self._live[job.id] = _Live()
        request = ClusterRequest(
            cluster_id=cluster_id,
            job_id=job.id,
            owner=job.owner,
            nodes=r.nodes,
            cpus_per_node=r.cpus_per_node,
            gpus_per_node=r.gpus_per_node,
            mem_mb=r.mem_mb,
            flavor=job.spec.flavor,
            control_url=self.settings.control_url,
            ca_pem=self.settings.ca_pem,
            token=token,
        )
        info = await gate.create_cluster(request)
        self.store.update(job.id, flavor=info.flavor, price_per_hour=info.price_per_hour)
        self._gate_failures.pop(job.id, None)

    def _allowed_gates(self, job: Job) -> tuple[str, ...]:
        """The gates a job may be planned on; () means any.

        A job that names its gate gets that one.  Otherwise the gates that failed
        to create its cluster lately (``gate_failure_memory_s``) are left out;
        ``()`` when none failed lately or when every gate did (``_begin`` fails
        the job then).
        """
        if job.spec.gate:
            return (job.spec.gate,)
        failed = self._gate_failures.get(job.id)
        if not failed:
            return ()
        now = time.monotonic()
        for name, when in list(failed.items()):
            if now - when > self.settings.gate_failure_memory_s:
                del failed[name]
        return tuple(g for g in sorted(self.gates) if g not in failed) if failed else ()

    async def _drop_cluster(self, job: Job) -> None:
        self._let_go(job)
        gate = self.gates.get(job.gate or "")
        if gate is None or not job.cluster_id:
            return
        try:
            await gate.delete_cluster(job.cluster_id)
        except Exception:
            # the reaper deletes it soon: it is tagged with a job that is no longer live
            log.exception("deleting cluster %s failed", job.cluster_id)
            self._reap_soon = True

    def _let_go(self, job: Job) -> None:
        """The job no longer holds its cluster: forget it, charge its use, re-plan."""
        self._live.pop(job.id, None)
        self._releases += 1
        self._dirty.set()
        if job.started_at is not None and job.cluster_id:
            now = utcnow()
            ran_s = max(0.0, (now - job.started_at).total_seconds())
            asked_s = float(job.spec.resources.time_limit_s)  # the runtime history's two facts
            used_s = ran_s * job.spec.total_cpus
            self._charges.append(UsageCharge(job.owner, used_s, now.timestamp(), ran_s, asked_s))

    async def _requeue_lost(self, job: Job, reason: str) -> None:
        # the restart policy (revoke the token, drop the cluster, QUEUED or FAILED)
        await self.recovery.lose(job.id, reason)

    async def _watch(self) -> None:
        await self.recovery.watch()  # checkpoints, lost nodes seen by the gates
        await self.warm.expire()  # idle clusters past their gate's idle timeout
        now = time.monotonic()
        for job in self.store.list(states=[s for s in S if s.has_cluster()]):
            live = self._live.setdefault(job.id, _Live())
            if job.state == S.PROVISIONING:
                if now - live.since > self.settings.provisioning_timeout_s:
                    await self._requeue_lost(job, "the cluster's agents did not all call in")
                continue
            stale = [
                r for r, t in live.last_seen.items() if now - t > self.settings.heartbeat_timeout_s
            ]
            if stale:
                names = ", ".join(live.hellos.get(r, str(r)) for r in stale)
                await self._requeue_lost(job, f"node lost: no heartbeat from {names}")
                continue
            if job.state == S.RUNNING and job.started_at is not None:
                limit = timedelta(
                    seconds=job.spec.resources.time_limit_s + self.settings.time_limit_grace_s
                )
                if utcnow() - job.started_at > limit:
                    self.store.transition(
                        job.id, S.TIMEOUT, "time limit reached (enforced by the control plane)"
                    )
                    await self._drop_cluster(job)

    async def reap(self) -> list[str]:
        """Delete every cluster whose job is gone, terminal, or holds another cluster."""
        reaped = []
        for name, gate in self.gates.items():
            try:
                clusters = await gate.list_clusters()
            except Exception:
                continue
            held = self.warm.kept(name) | {  # a warm cluster keeps its first job's tag
                j.cluster_id for j in self.store.list(states=[s for s in S if s.has_cluster()])
                if j.gate == name and j.cluster_id}
            for info in clusters:
                try:
                    job = self.store.get(info.job_id, events=False)
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
                        self._reap_soon = True
        return reaped

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- warm reuse: idle clusters kept for the next job of a shape (skyport.core.warm)

    async def agent_idle_next(
        self, cluster_id: str, credential: str, rank: int, wait_s: float
    ) -> dict[str, Any]:
        return await self.warm.idle_next(cluster_id, credential, rank, wait_s)

    # -- checkpoints, requeues, injected failures (skyport.core.recovery)

    async def recovery_call(self, name: str, *args: Any) -> Any:
        from skyport.core.recovery import CALLS

        if name not in CALLS:
            raise ValidationError("call", name, "one of " + ", ".join(CALLS))
        return await getattr(self.recovery, name)(*args)
