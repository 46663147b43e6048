"""The Core service: executes what the job machine decides; ``skyport.core.actor`` is its Ray shell.

Every call and every loop step goes the same way:

1. read the facts the event needs (the job from the store, what a gate says);
2. ``JobMachine.handle(event, now)`` decides, with no I/O and no await;
3. ``_execute`` persists every store instruction in ONE transaction (a
   transition with its event, a revoked token, a parked cluster, an open
   checkpoint), and only then does the I/O (gates, storage) and feeds each
   result back as the next event.

Steps 1-3a run without an await in between, so two calls never decide on the
same stale job.  The Core is the only writer of the job store.  A background
loop re-plans when something changed (batched: a burst of submissions causes
a handful of passes), starts what the timetable says can start now, and ticks
the machine about once a second (lost nodes, time limits, checkpoints, idle
clusters).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from skyport import tokens
from skyport.checkpoint import LATEST
from skyport.config import InputPolicy, SubmitLimits
from skyport.core import arrays
from skyport.core.budget_desk import BudgetDesk
from skyport.core.budgets import BUDGET
from skyport.core.checkpoints import KEEP_VERSIONS, OpenCheckpoint
from skyport.core.dependencies import DEPENDENCY, DependencyDesk
from skyport.core.intake import JobIntake
from skyport.core.launch_calls import LaunchDesk
from skyport.core.machine import JobMachine, MachineSettings
from skyport.core.messages import (
    AgentExited,
    AgentHello,
    AgentState,
    CancelAfterCheckpoint,
    CancelAsked,
    CheckpointAsked,
    CheckpointPart,
    ClusterCreated,
    CreateCluster,
    CreateFailed,
    DeleteCluster,
    DropWarm,
    Event,
    Heartbeat,
    HoldAsked,
    IdleNext,
    Impossible,
    Instruction,
    Note,
    OverBudget,
    Planned,
    Preempted,
    Provision,
    ProvisionReady,
    PruneCheckpoint,
    PutWarm,
    Released,
    Replan,
    Reply,
    RequeueAsked,
    ResultStored,
    SaveCheckpoint,
    Started,
    Tick,
    Transition,
    Unplaced,
    Update,
    WakeIdle,
    WriteLatest,
)
from skyport.core.planning import build_snapshot, deadline_lapses_at, pool_of, reap, room
from skyport.core.uploads import UploadDesk
from skyport.core.views import CoreViews
from skyport.core.waiters import JobWaiters
from skyport.core.warm import MAX_WAIT_S
from skyport.errors import (
    AuthenticationError,
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
from skyport.gate.bootstrapcred import Exchanged, gate_of
from skyport.models import Job, JobSpec, JobState
from skyport.pki import Identity
from skyport.protocol import ArrayView, HeartbeatAnswer, NodeFacts
from skyport.scheduler import PlanEntry, SchedulePlan, UsageCharge, Waiting
from skyport.storage import JobStorage
from skyport.store import JobStore, StoreChange, utcnow
from skyport.timetable import Snapshot
from skyport.timetable.reasons import IMPOSSIBLE

log = logging.getLogger("skyport.core")

LIVENESS_INTERVAL_S = 2.0  # how often the gates are asked which clusters have dead nodes
S = JobState


class GatePort(Protocol):
    """What the Core needs of a gate (a Ray actor handle is wrapped into this)."""

    async def flavors(self) -> list[Flavor]: ...
    async def capacity(self) -> Capacity: ...
    async def type_name(self) -> str: ...
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
    async def warm_idle_timeout_s(self) -> float: ...  # 0.0: no warm reuse
    async def kill_node(self, cluster_id: str, rank: int) -> bool: ...  # GateFeature.KILL_NODE
    async def preempt(self, cluster_id: str, reclaim_after_s: float) -> float: ...
    async def exchange_bootstrap(self, credential: str) -> Exchanged: ...


Planner = Callable[[Snapshot, list[UsageCharge]], Awaitable[SchedulePlan]]


@dataclass(frozen=True)
class CoreSettings:
    control_url: str
    ca_pem: str
    heartbeat_timeout_s: float = 60.0
    provisioning_timeout_s: float = 180.0
    time_limit_grace_s: float = 30.0
    max_node_loss_restarts: int = 3
    gate_failure_memory_s: float = 600.0  # a gate that failed a job is avoided this long
    replan_interval_s: float = 0.2
    reap_interval_s: float = 60.0
    reap_retry_s: float = 3.0  # a failed delete is tried again this soon

    def machine(self) -> MachineSettings:
        return MachineSettings(
            heartbeat_timeout_s=self.heartbeat_timeout_s,
            provisioning_timeout_s=self.provisioning_timeout_s,
            time_limit_grace_s=self.time_limit_grace_s,
            max_node_loss_restarts=self.max_node_loss_restarts,
            gate_failure_memory_s=self.gate_failure_memory_s,
            control_url=self.control_url, ca_pem=self.ca_pem)


class CoreService:
    def __init__(
        self,
        store: JobStore,
        storage: JobStorage,
        gates: dict[str, GatePort],
        planner: Planner,
        settings: CoreSettings,
        policy_name: str = "fcfs",
        inputs: InputPolicy | None = None,
        limits: SubmitLimits | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.gates = gates
        self.planner = planner
        self.settings = settings
        self.policy_name = policy_name
        self.started_at = utcnow()
        self.machine = JobMachine(settings.machine())
        self._plan: dict[str, PlanEntry] = {}
        self._waiting: dict[str, Waiting] = {}  # why each queued job waits, from the last plan
        self._throttled: dict[str, str] = {}  # array tasks past their %N, last pass
        self._sick: set[str] = set()  # gates that did not answer the last planning pass
        self._dirty = asyncio.Event()
        self._replan_at: float | None = None  # a queued job's deadline lapses then
        store.on_change.append(lambda _job_id, _state: self._dirty.set())
        self.waiters = JobWaiters()  # pushed waits: every committed change wakes its waiters
        store.on_change.append(lambda job_id, _state: self.waiters.notify(job_id))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._passes = 0
        self._charges: list[UsageCharge] = []  # usage of jobs ended since the last pass
        self._reap_soon = False  # a delete failed: reap before reap_interval_s is up
        self._liveness_at = 0.0
        self._idle_events: dict[str, asyncio.Event] = {}
        self.intake = JobIntake(store, storage, gates, inputs, limits=limits)
        self.dependencies = DependencyDesk(store, storage)
        self.uploads = UploadDesk(store, storage)
        self.launches = LaunchDesk(store, self.agent_auth, self._node_names)
        store.on_change.append(self.launches.job_changed)
        self.budgets = BudgetDesk(store, gates, self._dirty.set)
        self.views = CoreViews(store, storage, gates, lambda: self._plan, policy_name,
                               self.started_at, lambda: {"passes": self._passes},
                               self._wait_reason)

    # -- executing the machine's decisions ------------------------------------------

    def _decide(self, *events: Event) -> tuple[list[Instruction], Any]:
        """Decide and persist (no await): the instructions left to execute, and the reply.

        Several events (a bulk cancel) are decided one after the other and
        persisted together, in one transaction.
        """
        now = time.time()
        instructions = [i for event in events for i in self.machine.handle(event, now)]
        for i in instructions:  # what a store change will point at is written first
            if isinstance(i, WriteLatest):
                self.storage.put(i.job_id, LATEST, json.dumps(i.record, indent=1).encode())
        changes: list[StoreChange] = []
        for i in instructions:
            if isinstance(i, Transition):
                changes.append(("transition", i.job_id, i.state, i.reason, i.fields))
            elif isinstance(i, Update):
                changes.append(("update", i.job_id, i.fields))
            elif isinstance(i, Note):
                changes.append(("note", i.job_id, i.reason))
            elif isinstance(i, PutWarm):
                changes.append(("put_warm", i.row))
            elif isinstance(i, DropWarm):
                changes.append(("drop_warm", i.cluster_id))
            elif isinstance(i, SaveCheckpoint):
                data = i.checkpoint.to_json() if i.checkpoint else None
                changes.append(("open_checkpoint", i.job_id, data))
        if changes:
            self.store.apply(changes)
        reply = next((i.answer for i in instructions if isinstance(i, Reply)), None)
        return instructions, reply

    def _run(self, *events: Event) -> Any:
        """Decide, persist, and start the I/O the decision asks for; the (first) reply."""
        instructions, reply = self._decide(*events)
        instructions += self._settle_dependants(instructions)
        self._abort_left_uploads(instructions)
        for i in instructions:
            if isinstance(i, DeleteCluster):
                self._spawn(self._delete(i.gate, i.cluster_id))
            elif isinstance(i, CreateCluster):
                self._spawn(self._create(i.gate, i.request))
            elif isinstance(i, Provision):
                self._spawn(self._provision(i.job_id, i.gate, i.warm_candidates))
            elif isinstance(i, Released):
                self._charge(i.job)
            elif isinstance(i, Replan):
                self._dirty.set()
            elif isinstance(i, WakeIdle):
                waiter = self._idle_events.pop(i.cluster_id, None)
                if waiter is not None:
                    waiter.set()
            elif isinstance(i, PruneCheckpoint):
                self._prune(i.job_id, i.version)
        return reply

    def _abort_left_uploads(self, instructions: list[Instruction]) -> None:
        """Each attempt that just ended (its token changed): its open uploads, aborted."""
        ended = {i.job_id for i in instructions if isinstance(i, (Transition, Update))
                 and "token_hash" in i.fields}
        for job_id in ended:
            if self.uploads.has_any(job_id):
                self._spawn(asyncio.to_thread(self.uploads.attempt_over, job_id))

    def _settle_dependants(self, instructions: list[Instruction]) -> list[Instruction]:
        """The queued jobs waiting on the jobs that just ended: cancelled if now never met.

        Each round's cancellations end jobs too, so a chain is settled link by
        link (a loop, not a recursion: a chain may be long).
        """
        out: list[Instruction] = []
        while True:
            ended = [i.job_id for i in instructions
                     if isinstance(i, Transition) and i.state.is_terminal()]
            event = self.dependencies.changed(ended) if ended else None
            if event is None:
                return out
            instructions, _ = self._decide(event)
            out += instructions

    def _job(self, job_id: str) -> Job:
        return self.store.get(job_id, events=False)

    async def _delete(self, gate_name: str, cluster_id: str) -> None:
        gate = self.gates.get(gate_name)
        if gate is None:
            return
        try:
            await gate.delete_cluster(cluster_id)
        except Exception:
            # the reaper deletes it soon: it is tagged with a job that is no longer live
            log.exception("deleting cluster %s failed", cluster_id)
            self._reap_soon = True

    async def _provision(self, job_id: str, gate_name: str, candidates: tuple[str, ...]) -> None:
        try:
            job = self._job(job_id)
            await asyncio.to_thread(arrays.stage_task, self.store, self.storage, job)
            # checked again: the policy (and a host's addresses) may have changed since submit
            for source in self.intake.sources(job.spec, job.owner):
                # gigabytes, maybe: in a worker thread, so the Core's loop (planning,
                # every other call) goes on meanwhile
                await asyncio.to_thread(self.storage.copy_in, job.id, source, job.owner,
                                        f"inputs/{source.name}")
            await asyncio.to_thread(self.dependencies.stage_results, job)
            usable: list[tuple[str, str | None]] = []
            for cluster_id in candidates:
                try:
                    info = await self.gates[gate_name].describe_cluster(cluster_id)
                    ok = info.state == "running" and all(n.alive for n in info.nodes)
                    usable.append((cluster_id, None if ok else (info.reason or info.state)))
                except SkyportError as exc:
                    usable.append((cluster_id, exc.message))
            self._run(ProvisionReady(self._job(job_id), gate_name, tuple(usable)))
        except (StorageError, ValidationError) as exc:
            self._run(CreateFailed(self._job(job_id), gate_name, "storage", exc.message,
                                   frozenset(self.gates)))
        except Exception as exc:
            log.exception("provisioning job %s failed", job_id)
            self._run(CreateFailed(self._job(job_id), gate_name, "error", str(exc),
                                   frozenset(self.gates)))

    async def _create(self, gate_name: str, request: ClusterRequest) -> None:
        try:
            info = await self.gates[gate_name].create_cluster(request)
        except CapacityError as exc:
            self._run(CreateFailed(self._job(request.job_id), gate_name, "capacity",
                                   exc.message, frozenset(self.gates)))
        except GateError as exc:
            self._run(CreateFailed(self._job(request.job_id), gate_name, "gate", exc.message,
                                   frozenset(self.gates)))
        except Exception as exc:
            log.exception("creating the cluster of job %s failed", request.job_id)
            self._run(CreateFailed(self._job(request.job_id), gate_name, "error", str(exc),
                                   frozenset(self.gates)))
        else:
            self._run(ClusterCreated(request.job_id, request.cluster_id, info.flavor,
                                     info.price_per_hour))

    def _charge(self, job: Job) -> None:
        if job.started_at is not None and job.cluster_id:
            now = utcnow()
            ran_s = max(0.0, (now - job.started_at).total_seconds())
            asked_s = float(job.spec.resources.time_limit_s)
            # the Scheduler charges fair share with it and learns the owner's runtimes
            self._charges.append(UsageCharge(job.owner, ran_s * job.spec.total_cpus,
                                             now.timestamp(), ran_s, asked_s))

    def _prune(self, job_id: str, version: int) -> None:
        """Delete checkpoint versions older than the last ``KEEP_VERSIONS`` (best effort)."""
        old = version - KEEP_VERSIONS
        if old < 1:
            return
        try:
            self.storage.remove(job_id, f"checkpoints/v{old}")
        except Exception as exc:  # noqa: BLE001 - a leftover version only costs space
            log.warning("could not prune checkpoint v%d of %s: %s", old, job_id, exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- start-up ---------------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Recover from whatever the last control plane left, then run the loop."""
        for name, gate in self.gates.items():
            self.machine.warm.idle_timeouts[name] = await self._idle_timeout(gate)
        jobs = self.store.list(states=[s for s in S if not s.is_terminal()])
        alive = frozenset([j.id for j in jobs if j.state.has_cluster()
                           and await self._cluster_alive(j)])
        opened = []
        for job_id, data in self.store.open_checkpoints().items():
            try:
                opened.append(OpenCheckpoint.from_json(data))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("job %s: unreadable open checkpoint dropped: %s", job_id, exc)
        self._run(Started(tuple(jobs), alive, tuple(self.store.warm_clusters()),
                          tuple(opened), frozenset(self.gates)))
        upstream = self.dependencies.changed(None)  # a cascade a stop cut short, finished
        if upstream is not None:
            self._run(upstream)
        setting_up = (S.SCHEDULED, S.PROVISIONING)
        requeued = [j.id for j in jobs if j.state in setting_up
                    or (j.state.has_cluster() and j.id not in alive)]
        adopted = [j.id for j in jobs if j.state.has_cluster() and j.state not in setting_up
                   and j.id in alive]
        await self.reap()
        self._spawn(asyncio.to_thread(self.uploads.sweep))
        self._loop_task = asyncio.create_task(self._loop())
        self._dirty.set()
        return {"requeued": requeued, "adopted": adopted}

    @staticmethod
    async def _idle_timeout(gate: GatePort) -> float:
        try:
            return float(await gate.warm_idle_timeout_s())
        except SkyportError as exc:  # a sick gate at start-up: no warm reuse there this time
            log.warning("cannot read a gate's idle timeout: %s", exc)
            return 0.0

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

    # -- user calls ---------------------------------------------------------------------

    async def submit(self, who: Identity, spec: JobSpec, payload_b64: str | None = None) -> Job:
        await self.budgets.check_submit(who.username, spec)
        job = await self.intake.submit(who, spec, payload_b64)
        if job.spec.dependency:  # its upstream may have ended already, even during intake
            upstream = self.dependencies.event([job])
            if upstream is not None:
                self._run(upstream)
            job = self.store.get(job.id)
        return job

    async def submit_many(self, who: Identity,
                          jobs: list[tuple[JobSpec, str | None]]) -> list[Job]:
        """Several jobs in one call and one transaction (``POST /v1/jobs/batch``)."""
        for i, (spec, _) in enumerate(jobs):
            try:
                await self.budgets.check_submit(who.username, spec)
            except SkyportError as exc:
                exc.message = f"jobs[{i}]: {exc.message}"
                exc.args = (exc.message,)
                raise
        stored = await self.intake.submit_many(who, jobs)
        dependent = [j for j in stored if j.spec.dependency]
        if dependent:  # as for one job: an upstream may have ended already
            upstream = self.dependencies.event(dependent)
            if upstream is not None:
                self._run(upstream)
            stored = [self.store.get(j.id) if j.spec.dependency else j for j in stored]
        return stored

    async def submit_array(self, who: Identity, spec: JobSpec,
                           payloads_b64: list[str] | None = None) -> ArrayView:
        record = await self.intake.submit_array(who, spec, payloads_b64)
        if record.spec.dependency:  # as for a job: its upstream may be over already
            upstream = self.dependencies.array_event(record.id)
            if upstream is not None:
                self._run(upstream)
        return arrays.array_view(self.store, record)

    async def array(self, who: Identity, array_id: str) -> ArrayView:
        return arrays.array_view(self.store, arrays.visible_array(self.store, who, array_id))

    def _visible(self, who: Identity, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job.owner != who.username and not who.is_admin:
            # the same answer as for a job that does not exist: no probing of ids
            raise NotFoundError(f"no job {job_id}")
        return self._with_plan(job)

    async def get(self, who: Identity, job_id: str) -> Job:
        return self._visible(who, job_id)

    async def wait_job(self, who: Identity, job_id: str, timeout_s: float,
                       since: JobState | None = None) -> Job:
        """The job once it is terminal or has left ``since``; as it is after ``timeout_s``."""
        job = self._visible(who, job_id)
        deadline = time.monotonic() + timeout_s
        # no await between reading the job and registering the waiter: no change is missed
        while not (job.state.is_terminal() or (since is not None and job.state != since)):
            if not await self.waiters.wait(job_id, deadline - time.monotonic()):
                break
            job = self._visible(who, job_id)
        return job

    async def jobs(
        self, who: Identity, all_users: bool = False, states: list[JobState] | None = None,
        after: str | None = None, limit: int | None = None, newest: bool = False,
    ) -> list[Job]:
        """One page of jobs in submission order (``newest``: newest first): up to ``limit``
        after the job ``after``."""
        if all_users and not who.is_admin:
            raise PermissionDeniedError("only an admin may list every user's jobs")
        owner = None if all_users else who.username
        page = self.store.list(owner=owner, states=states, after=after, limit=limit,
                               newest=newest)
        # one look at the upstream jobs for the page: a dependent array's tasks share them
        blocked = self.dependencies.blocked([j for j in page if j.state == S.QUEUED])
        return [self._with_plan(j, blocked) for j in page]

    async def cancel(self, who: Identity, job_id: str) -> Job:
        self._run(CancelAsked(self._visible(who, job_id), who.username))
        return self.store.get(job_id)

    async def cancel_many(self, who: Identity, job_ids: list[str],
                          states: list[JobState] | None, name: str | None,
                          all_mine: bool) -> dict[str, list[str]]:
        """Cancel every job of yours that matches (scancel's selectors), in one transaction.

        ``job_ids`` and the filters narrow each other; at least one is needed.
        Admins name other users' jobs by id; the filters select the caller's own.
        """
        if not (job_ids or states or name or all_mine):
            raise ValidationError("selection", None, "job ids, --state, --name or --all")
        if states and any(s.is_terminal() for s in states):
            raise ValidationError("state", [s.value for s in states if s.is_terminal()],
                                  "states a job can be cancelled in (not terminal)")
        not_found: list[str] = []
        if job_ids:
            candidates = []
            for job_id in dict.fromkeys(job_ids):
                tasks = arrays.array_tasks(self.store, who, job_id)
                if tasks is not None:  # an array's id: every task of it not yet over
                    candidates.extend(tasks)
                    continue
                try:
                    candidates.append(self._visible(who, job_id))
                except NotFoundError:
                    not_found.append(job_id)
        else:
            candidates = self.store.list(owner=who.username,
                                         states=[s for s in S if not s.is_terminal()])
        chosen = [j for j in candidates
                  if (not states or j.state in states)
                  and (name is None or fnmatch.fnmatchcase(j.spec.name, name))]
        over = [j.id for j in chosen if j.state.is_terminal()]
        live = [j for j in chosen if not j.state.is_terminal()]
        self._run(*(CancelAsked(j, who.username) for j in live))
        return {"cancelled": [j.id for j in live], "already_ended": over,
                "not_found": not_found}

    def _with_plan(self, job: Job, blocked: dict[str, str] | None = None) -> Job:
        """The job with its planned start and why it waits, from the last planning pass."""
        entry = self._plan.get(job.id)
        if entry is not None and job.state == S.QUEUED and not job.held:
            job.planned_start_at = datetime.fromtimestamp(entry.start_s, UTC)
            job.planned_start_predicted = entry.predicted
        reason = self._wait_reason(job, blocked)
        if reason is not None:
            job.wait_reason, job.wait_detail = reason
        return job

    def _wait_reason(self, job: Job,
                     blocked: dict[str, str] | None = None) -> tuple[str, str] | None:
        if job.state in (S.SCHEDULED, S.PROVISIONING):
            return "Provisioning", f"gate {job.gate} is building its cluster"
        if job.state != S.QUEUED:
            return None
        if job.held:
            return "Held", f"held: 'skyport release {job.id}' puts it back in the queue"
        if job.spec.dependency:
            waits = (self.dependencies.blocked([job]) if blocked is None else blocked).get(job.id)
            if waits is not None:
                return DEPENDENCY, waits
        if job.id in self._throttled:
            return arrays.ARRAY_TASK_LIMIT, self._throttled[job.id]
        if job.id in self.budgets.waiting:
            return BUDGET, self.budgets.waiting[job.id]
        failed = self.machine.failed_gates(job.id)
        usable = {job.spec.gate} if job.spec.gate else set(self.gates)
        sick = self._sick & usable
        if failed or (sick and sick == usable):  # every gate it may use is in trouble
            names = ", ".join(sorted(set(failed) | sick))
            return "GateUnhealthy", f"gate {names} failed lately; planned on the others " \
                "or retried when it answers"
        waiting = self._waiting.get(job.id)
        if waiting is not None:
            return waiting.code, waiting.detail
        if job.id not in self._plan:
            return "Unplanned", "not planned yet: the scheduler plans it on its next pass"
        return None

    async def hold(self, who: Identity, job_id: str) -> Job:
        self._run(HoldAsked(self._visible(who, job_id), who.username, True))
        return self._with_plan(self.store.get(job_id))

    async def release(self, who: Identity, job_id: str) -> Job:
        self._run(HoldAsked(self._visible(who, job_id), who.username, False))
        return self._with_plan(self.store.get(job_id))

    async def user_checkpoint(self, who: Identity, job_id: str) -> dict[str, Any]:
        job = self._visible(who, job_id)
        return dict(self._run(CheckpointAsked(job, f"requested by {who.username}")))

    async def checkpoints(self, who: Identity, job_id: str) -> dict[str, Any]:
        self._visible(who, job_id)
        ck = self.machine.checkpoints.get(job_id)
        return {"latest": self._latest(job_id), "pending": ck.version if ck else None}

    async def requeue(self, who: Identity, job_id: str, wait_s: float = 60.0) -> Job:
        """Requeue a job by hand; a RUNNING one takes a checkpoint first (up to ``wait_s``)."""
        self._run(RequeueAsked(self._visible(who, job_id), who.username, wait_s))
        return self.store.get(job_id)

    async def cancel_after_checkpoint(self, who: Identity, job_id: str,
                                      wait_s: float = 60.0) -> Job:
        self._run(CancelAfterCheckpoint(self._visible(who, job_id), who.username, wait_s))
        return self.store.get(job_id)

    async def debug_kill_node(self, who: Identity, job_id: str, node: int | None) -> dict:
        job = self._admin_job(who, job_id)
        rank = job.nodes - 1 if node is None else node
        if not 0 <= rank < job.nodes:
            raise ValidationError("node", node, f"0..{job.nodes - 1}")
        gate = self.gates[job.gate or ""]
        killed = await gate.kill_node(job.cluster_id or "", rank)
        self._liveness_at = 0.0  # look at once
        return {"job_id": job_id, "cluster_id": job.cluster_id, "node": rank, "killed": killed}

    async def debug_preempt(self, who: Identity, job_id: str, notice_s: float = 20.0) -> dict:
        """A preemption notice: checkpoint, requeue; the gate reclaims the nodes later."""
        job = self._admin_job(who, job_id)
        gate = self.gates[job.gate or ""]
        # the "cloud" takes the nodes back a little after the notice's deadline
        await gate.preempt(job.cluster_id or "", notice_s + 5.0)
        self._run(Preempted(self._job(job_id), notice_s))
        return {"job_id": job_id, "cluster_id": job.cluster_id, "notice_s": notice_s}

    def _admin_job(self, who: Identity, job_id: str) -> Job:
        if not who.is_admin:
            raise PermissionDeniedError("only an admin may inject failures")
        job = self._job(job_id)
        if not job.state.has_cluster() or not job.cluster_id or job.gate not in self.gates:
            raise ConflictError(f"job {job_id} is {job.state.value}: it holds no cluster")
        return job

    def _latest(self, job_id: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.storage.get(job_id, LATEST)))
        except (NotFoundError, ValueError):
            return None
        except SkyportError as exc:
            log.warning("cannot read the latest checkpoint of %s: %s", job_id, exc)
            return None

    # -- views ------------------------------------------------------------------------

    async def status(self, who: Identity | None = None) -> dict[str, Any]:
        return await self.views.status(who)

    async def gate_info(self) -> list[dict[str, Any]]:
        return await self.views.gate_info()

    async def timetable(self, who: Identity | None = None) -> dict[str, Any]:
        return await self.views.timetable(who)

    async def clusters(self, who: Identity) -> list[dict[str, Any]]:
        return await self.views.clusters(who)

    # -- agent calls ------------------------------------------------------------------

    async def agent_auth(self, job_id: str, token: str) -> Job:
        expected = self.store.token_hash(job_id)
        if expected is None or not tokens.tokens_equal(tokens.hash_token(token), expected):
            raise PermissionDeniedError(f"this token does not reach job {job_id}")
        return self._job(job_id)

    async def agent_hello(self, job_id: str, token: str, rank: int, node_name: str,
                          facts: NodeFacts | None = None) -> dict:
        job = await self.agent_auth(job_id, token)
        self._run(AgentHello(job, rank, node_name, facts))
        job = self.store.get(job_id)
        return {"job": job.summary(), "num_nodes": job.spec.resources.nodes,
                "restart_count": job.restarts}

    async def agent_heartbeat(self, job_id: str, token: str, rank: int) -> HeartbeatAnswer:
        job = await self.agent_auth(job_id, token)
        answer: HeartbeatAnswer = self._run(Heartbeat(job, rank))
        return answer

    async def agent_state(self, job_id: str, token: str, state: JobState, reason: str) -> Job:
        job = await self.agent_auth(job_id, token)
        self._run(AgentState(job, state, reason))
        return self.store.get(job_id)

    async def agent_exit(
        self, job_id: str, token: str, exit_code: int, timed_out: bool, reason: str,
        output_problems: tuple[str, ...] = (),
    ) -> Job:
        job = await self.agent_auth(job_id, token)
        info = None
        if self.machine.exit_needs_cluster(job, exit_code, timed_out):
            # when one node dies, mpiexec on the others exits at once, usually before the
            # liveness check has seen the loss: look at the cluster before failing the job
            try:
                info = await self.gates[job.gate or ""].describe_cluster(job.cluster_id or "")
            except Exception as exc:  # noqa: BLE001 - a sick gate: an ordinary failure, then
                log.warning("job %s: could not look at cluster %s after exit code %d: %s",
                            job.id, job.cluster_id, exit_code, exc)
            job = self._job(job_id)
        self._run(AgentExited(job, exit_code, timed_out, reason, info,
                              tuple(output_problems)))
        return self.store.get(job_id)

    async def agent_result_stored(self, job_id: str, token: str, path: str,
                                  sha256: str) -> None:
        """Record the digest of a function outcome the live attempt just stored."""
        job = await self.agent_auth(job_id, token)
        self._run(ResultStored(job, path, sha256))

    async def direct_upload_opened(self, job_id: str, token: str, path: str,
                                   upload_id: str) -> None:
        """Record a multipart upload opened for the live attempt (no await in between:
        an attempt that ends after this aborts it, one that ended before refuses)."""
        await self.agent_auth(job_id, token)
        self.uploads.opened(job_id, tokens.hash_token(token), path, upload_id)

    async def direct_upload_closed(self, job_id: str, token: str, upload_id: str) -> None:
        """Forget an upload its attempt completed: only the attempt that opened it may,
        even if it ended meanwhile (the file is stored; the answer should not fail)."""
        self.uploads.closed(job_id, tokens.hash_token(token), upload_id)

    async def agent_checkpoint_request(self, job_id: str, token: str,
                                       reason: str) -> dict[str, Any]:
        job = await self.agent_auth(job_id, token)
        return dict(self._run(CheckpointAsked(job, reason or "requested by the job")))

    async def agent_checkpoint_part(self, job_id: str, token: str, version: int, ck_id: str,
                                    rank: int, files: list[dict[str, Any]]) -> dict[str, Any]:
        job = await self.agent_auth(job_id, token)
        parts = tuple((str(f.get("path", "")), int(f.get("size", 0))) for f in files)
        return dict(self._run(CheckpointPart(job, version, ck_id, rank, parts)))

    async def agent_checkpoint_latest(self, job_id: str, token: str) -> dict[str, Any]:
        await self.agent_auth(job_id, token)
        ck = self.machine.checkpoints.get(job_id)
        # where this attempt's logs go on: an earlier attempt's output stays in front
        sizes = {s: self.storage.size(job_id, f"logs/{s}") for s in ("stdout", "stderr")}
        return {"latest": self._latest(job_id), "pending": ck.version if ck else None,
                "log_sizes": sizes}

    async def bootstrap_exchange(self, credential: str, job_id: str,
                                 node_rank: int) -> dict[str, Any]:
        """A cloud node's one-time bootstrap credential for its job's live token."""
        refused = AuthenticationError("this bootstrap credential reaches nothing")
        gate = self.gates.get(gate_of(credential))
        if gate is None:
            raise refused
        got = await gate.exchange_bootstrap(credential)
        if (got.job_id, got.node_rank) != (job_id, node_rank):
            raise refused
        await self.agent_auth(job_id, got.token)  # the attempt must still be live
        return {"job_id": got.job_id, "node_rank": got.node_rank, "token": got.token}

    async def agent_idle_next(self, cluster_id: str, credential: str, rank: int,
                              wait_s: float) -> dict[str, Any]:
        """An idle node's one call: ``assign``, ``wait`` (long-polled) or ``stop``."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        while True:
            answer: dict[str, Any] = self._run(IdleNext(cluster_id, credential, rank))
            left = deadline - time.monotonic()
            if answer["action"] != "wait" or left <= 0:
                return answer
            event = self._idle_events.setdefault(cluster_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                pass

    def _node_names(self, job: Job) -> list[str]:
        live = self.machine.live.get(job.id)
        return job.node_names or (
            [live.hellos.get(r, "") for r in range(job.nodes)] if live else [])

    # launches: node 0 runs commands on node k through k's agent (skyport.core.launch_calls)

    async def agent_launch_nodes(self, job_id: str, token: str) -> dict[str, Any]:
        return await self.launches.nodes(job_id, token)

    async def agent_launch_create(self, job_id: str, token: str, node: int, argv: list[str],
                                  env: dict[str, str], cwd: str,
                                  op: str = "run") -> dict[str, Any]:
        return await self.launches.create(job_id, token, node, argv, env, cwd, op)

    async def agent_launch_poll(self, job_id: str, token: str, node: int,
                                wait_s: float) -> dict[str, Any]:
        return await self.launches.poll(job_id, token, node, wait_s)

    async def agent_launch_output(self, job_id: str, token: str, launch_id: str, node: int,
                                  stream: str, offset: int, data: bytes) -> dict[str, int]:
        return await self.launches.output(job_id, token, launch_id, node, stream, offset, data)

    async def agent_launch_exit(self, job_id: str, token: str, launch_id: str, node: int,
                                exit_code: int) -> dict[str, Any]:
        return await self.launches.exit(job_id, token, launch_id, node, exit_code)

    async def agent_launch_read(self, job_id: str, token: str, launch_id: str,
                                offsets: dict[str, int], wait_s: float) -> dict[str, Any]:
        return await self.launches.read(job_id, token, launch_id, offsets, wait_s)

    async def agent_launch_cancel(self, job_id: str, token: str, launch_id: str) -> dict:
        return await self.launches.cancel(job_id, token, launch_id)

    # -- the loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        last_tick = last_reap = 0.0
        burst = False
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), timeout=1.0)
            except TimeoutError:
                pass
            try:
                if self._replan_at is not None and time.time() >= self._replan_at:
                    self._dirty.set()
                if self._dirty.is_set():
                    if burst:  # more came in during the last pass: let the burst gather
                        await asyncio.sleep(self.settings.replan_interval_s)
                    self._dirty.clear()
                    # planned on the change itself: an isolated submission waits for no timer
                    await self.schedule_pass()
                    burst = self._dirty.is_set()
                now = time.monotonic()
                if now - last_tick >= 1.0:
                    last_tick = now
                    await self._tick()
                due = self.settings.reap_retry_s if self._reap_soon \
                    else self.settings.reap_interval_s
                if now - last_reap >= due:
                    last_reap = now
                    self._reap_soon = False
                    await self.reap()
                    if self.uploads.any_left():  # an abort the store refused earlier
                        self._spawn(asyncio.to_thread(self.uploads.retry))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("core loop pass failed; going on")

    async def _tick(self) -> None:
        listed: dict[str, ClusterInfo] | None = None
        listed_gates: set[str] = set()
        now = time.monotonic()
        if now - self._liveness_at >= LIVENESS_INTERVAL_S and \
                self.store.list(states=[S.STAGING_IN, S.RUNNING, S.STAGING_OUT], limit=1):
            self._liveness_at = now
            listed = {}
            for name, gate in self.gates.items():
                try:
                    for info in await gate.list_clusters():
                        listed[info.cluster_id] = info
                    listed_gates.add(name)
                except Exception as exc:  # noqa: BLE001 - a sick gate: heartbeats remain
                    log.warning("liveness: gate %s did not list its clusters: %s", name, exc)
        jobs = self.store.list(states=[s for s in S if s.has_cluster()])
        self._run(Tick(tuple(jobs), listed, frozenset(listed_gates)))

    async def schedule_pass(self) -> None:
        self._passes += 1
        pools = []
        flavors: dict[str, list[Flavor]] = {}
        for name, gate in sorted(self.gates.items()):
            try:
                offered = list(await gate.flavors())
                pools.append(pool_of(name, await gate.capacity(), offered))
                flavors[name] = offered
            except Exception:
                continue  # a sick gate gets no work this pass
        now = time.time()
        gates = sorted(self.gates)
        self._sick = {g for g in gates} - {p.name for p in pools}
        queued = [j for j in self.store.list(states=[S.QUEUED]) if not j.held]
        blocked = self.dependencies.blocked(queued)
        queued = [j for j in queued if j.id not in blocked]
        limits = self.store.array_throttles()
        queued, self._throttled = arrays.throttle(queued, limits, self.store.array_counts(limits))
        queued, over = await self.budgets.admit(queued, now)  # the rest wait for money
        for job_id, why in over:
            try:
                self._run(OverBudget(self._job(job_id), why))
            except NotFoundError:
                continue
        snapshot = build_snapshot(
            now,
            queued,
            self.store.list(states=[s for s in S if s.has_cluster() or s == S.SCHEDULED]),
            self.machine.warm.holding(),
            pools,
            lambda job: self.machine.allowed_gates(job, gates, now),
            flavors,
        )
        self._replan_at = deadline_lapses_at(snapshot)
        charges, self._charges = self._charges, []
        plan = await self.planner(snapshot, charges)
        self._plan = {e.job_id: e for e in plan.entries}
        self._waiting = {w.job_id: w for w in plan.waiting}
        for w in plan.waiting:
            if w.code == IMPOSSIBLE and not self._sick:  # every gate answered: for good
                try:
                    self._run(Impossible(self._job(w.job_id), w.detail))
                except NotFoundError:
                    continue
        for entry in plan.entries:
            if not entry.start_now:
                continue
            try:
                job = self._job(entry.job_id)  # as it is now: the plan took an await
            except NotFoundError:
                continue
            self._run(Planned(((job, entry.pool),)))
        self._settle_warm(snapshot, queued, plan, lambda job: self.machine.allowed_gates(
            job, gates, now))

    def _settle_warm(self, snapshot: Snapshot, queued: list[Job], plan: SchedulePlan,
                     allowed: Callable[[Job], tuple[str, ...]]) -> None:
        """The jobs the plan did not start, and parked clusters: reuse them or make room."""
        if not any(not w.assigned_job for w in self.machine.warm.rows.values()):
            return
        by_id = {j.id: j for j in queued}
        order = [e.job_id for e in plan.entries if not e.start_now] + [
            w.job_id for w in plan.waiting if w.code != IMPOSSIBLE]
        jobs = tuple((by_id[i], allowed(by_id[i])) for i in order if i in by_id)
        if not jobs:
            return
        try:
            self._run(Unplaced(jobs, room(snapshot)))
        except (ConflictError, NotFoundError):
            self._dirty.set()  # a job changed while the plan was made: next pass

    async def reap(self) -> list[str]:
        """Delete every cluster whose job is gone, terminal, or holds another cluster."""
        reaped, failed = await reap(self.store, self.gates, self.machine.warm.kept)
        self._reap_soon = self._reap_soon or failed
        return reaped



__all__ = ["CoreService", "CoreSettings", "GatePort", "Planner"]
