"""The job machine: every job-state decision of the Core, pure.

``JobMachine.handle(event, now) -> list[Instruction]``: no I/O, no clock, no
await.  Events say what happened (a plan, a cluster created or failed, an
agent's hello, heartbeat or exit, a cancel, a checkpoint part, a tick);
instructions say what to do (persist a transition, create or delete a
cluster, park it, answer the agent, write a checkpoint record).  The Core
service (``skyport.core.service``) reads the facts an event needs, calls the
machine, persists every store instruction in one transaction, then does the
I/O and feeds the results back as events.

The machine keeps only what is not in the store: which nodes have called in
and when they were last heard of, open checkpoints (persisted through
``SaveCheckpoint`` all the same), the warm pool's hand-overs, and which
gates failed a job lately.  Everything else arrives with the event, as the
``Job`` the service has just read.

Lifecycle (``skyport.lifecycle`` checks each step)::

    QUEUED -> SCHEDULED -> PROVISIONING -> STAGING_IN -> RUNNING -> STAGING_OUT -> SUCCEEDED
                                                            |                    \\-> FAILED
       any non-terminal state -> CANCELLED                  +-> (node lost, preempted) -> QUEUED
       RUNNING past its time limit -> TIMEOUT                   again, from its latest checkpoint

Every terminal transition and every requeue revokes the attempt's token in
the same transaction (``token_hash=None``); a parked cluster's job keeps its
token until every node has had its idle credential.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from skyport import tokens
from skyport.checkpoint import parse_signal
from skyport.core.checkpoints import After, CheckpointBook, OpenCheckpoint, latest_record
from skyport.core.dependencies import never_met
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
    UpstreamChanged,
    WakeIdle,
    WriteLatest,
)
from skyport.core.warm import WarmBook
from skyport.errors import ConflictError, PermissionDeniedError, ValidationError
from skyport.gate import ClusterInfo, ClusterRequest
from skyport.models import Job, JobState
from skyport.protocol import CheckpointOrder, HeartbeatAnswer, IdleGrant, NodeFacts
from skyport.store import WarmCluster

__all__ = ["LOST_TAG", "JobMachine", "MachineSettings", "needs_mpi", "nodes_lack"]

S = JobState
LOST_TAG = "attempt lost: "  # prefix of the QUEUED event of every restart the policy counts
_SEP = " | "


@dataclass(frozen=True)
class MachineSettings:
    heartbeat_timeout_s: float = 60.0
    provisioning_timeout_s: float = 180.0
    time_limit_grace_s: float = 30.0
    max_node_loss_restarts: int = 3
    gate_failure_memory_s: float = 600.0  # a gate that failed a job is avoided this long
    control_url: str = ""
    ca_pem: str = ""


@dataclass
class _Live:
    """Which nodes of a job holding a cluster called in, and when each was last heard of."""

    since: float
    hellos: dict[int, str] = field(default_factory=dict)
    last_seen: dict[int, float] = field(default_factory=dict)
    facts: dict[int, NodeFacts] = field(default_factory=dict)  # as each agent reported


class JobMachine:
    def __init__(self, settings: MachineSettings | None = None,
                 idle_timeouts: dict[str, float] | None = None,
                 new_token: Callable[[], str] = tokens.new_token,
                 new_id: Callable[[], str] = lambda: secrets.token_hex(4)) -> None:
        self.settings = settings or MachineSettings()
        self.checkpoints = CheckpointBook()
        self.warm = WarmBook(idle_timeouts)
        self.new_token = new_token
        self.new_id = new_id  # checkpoint ids: tests pass a counter
        self.live: dict[str, _Live] = {}
        self.releases = 0  # clusters let go so far: capacity may have come free
        self._capacity_wait: dict[str, int] = {}  # job -> releases when the gate said no
        self._gate_failures: dict[str, dict[str, float]] = {}  # job -> gate -> when

    # -- the one entry point ---------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Instruction]:
        """What to do about ``event`` at wall time ``now``."""
        method = getattr(self, "_on_" + type(event).__name__)
        out: list[Instruction] = method(event, now)
        return out

    # -- questions the service asks before it gathers facts ------------------------

    @staticmethod
    def exit_needs_cluster(job: Job, exit_code: int, timed_out: bool) -> bool:
        """A non-zero exit of a multi-node job may be a lost node's doing: look first."""
        return exit_code != 0 and not timed_out and job.nodes >= 2 and bool(job.cluster_id)

    def allowed_gates(self, job: Job, gates: list[str], now: float) -> tuple[str, ...]:
        """The gates a job may be planned on; () means any.

        A job that names its gate gets that one.  Otherwise the gates that
        failed to create its cluster lately are left out; () when none failed
        lately or when every gate did (the job then fails on its next failure).
        """
        if job.spec.gate:
            return (job.spec.gate,)
        failed = self._gate_failures.get(job.id)
        if not failed:
            return ()
        for name, when in list(failed.items()):
            if now - when > self.settings.gate_failure_memory_s:
                del failed[name]
        return tuple(g for g in sorted(gates) if g not in failed) if failed else ()

    def failed_gates(self, job_id: str) -> list[str]:
        """The gates that failed to create this job's cluster lately."""
        return sorted(self._gate_failures.get(job_id, {}))

    def restart_limit(self, job: Job) -> int:
        if job.spec.max_restarts is not None:
            return job.spec.max_restarts
        return self.settings.max_node_loss_restarts

    # -- start-up ---------------------------------------------------------------------

    def _on_Started(self, ev: Started, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        self.warm.load(list(ev.warm))
        for w in ev.warm:
            if w.assigned_job or w.gate not in ev.gates:  # its hand-over token was in memory
                out += self._discard_warm(w, "the control plane restarted during its hand-over")
        opened = {ck.job_id: ck for ck in ev.open_checkpoints}
        for job in ev.jobs:
            if job.spec.gate is not None and job.spec.gate not in ev.gates:
                # its gate was removed from the configuration: it can never run now
                out += self._let_go(job, delete=False) if job.state.has_cluster() else []
                out.append(Transition(job.id, S.CANCELLED,
                                      f"can never run: gate {job.spec.gate} is no longer "
                                      "configured", {"token_hash": None}))
                continue
            if job.state in (S.SCHEDULED, S.PROVISIONING):
                out += self._let_go(job, delete=True)
                out.append(Transition(job.id, S.QUEUED,
                                      "control plane restarted before the cluster was ready",
                                      {"token_hash": None, "cluster_id": None}))
            elif job.state.has_cluster():
                if job.id in ev.alive:
                    live = self.live[job.id] = _Live(since=now)
                    for rank, name in enumerate(job.node_names):
                        live.hellos[rank] = name
                        live.last_seen[rank] = now
                    if job.id in opened and job.state == S.RUNNING:
                        self.checkpoints.restore(opened.pop(job.id))
                else:
                    out += self._lose(job, "cluster lost while the control plane was down", now)
        for job_id in opened:  # an open checkpoint of a job that no longer runs
            out.append(SaveCheckpoint(job_id, None))
        out.append(Replan())
        return out

    # -- planning and provisioning ----------------------------------------------------

    def _on_Planned(self, ev: Planned, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for job, gate in ev.starts:
            if job.state != S.QUEUED:
                continue  # cancelled meanwhile
            if self._capacity_wait.get(job.id) == self.releases:
                continue  # the gate said no; wait until some cluster is released
            out.append(Transition(job.id, S.SCHEDULED, f"planned on gate {gate}", {"gate": gate}))
            out.append(Provision(job.id, gate, tuple(self.warm.candidates(job, gate))))
        return out

    def _on_Unplaced(self, ev: Unplaced, now: float) -> list[Instruction]:
        """Jobs the scheduler could not start: onto their own parked clusters, or make room."""
        reuses, evicted = self.warm.settle(
            [(j, a) for j, a in ev.jobs if j.state == S.QUEUED], ev.room)
        out: list[Instruction] = []
        for w in evicted:
            out += self._discard_warm(w, "its cores are wanted by a queued job")
        for job, gate, cluster_id in reuses:
            out.append(Transition(job.id, S.SCHEDULED,
                                  f"planned on gate {gate}, onto its warm cluster {cluster_id}",
                                  {"gate": gate}))
            out.append(Provision(job.id, gate, (cluster_id,)))
            self.warm.promise(cluster_id, job.id)
        return out

    def _on_ProvisionReady(self, ev: ProvisionReady, now: float) -> list[Instruction]:
        job = ev.job
        self.warm.unpromise(job.id)
        if job.state != S.SCHEDULED:
            return []  # cancelled meanwhile
        out: list[Instruction] = []
        for cluster_id, why in ev.usable:
            w = self.warm.rows.get(cluster_id)
            if w is None or w.assigned_job:
                continue
            if why is not None:
                out += self._discard_warm(w, f"not reusable: {why}")
                continue
            token = self.new_token()
            w = self.warm.assign(cluster_id, job.id, token)
            self._gate_failures.pop(job.id, None)
            self.live[job.id] = _Live(since=now)
            out += [
                PutWarm(w),  # a restart knows it went
                Transition(job.id, S.PROVISIONING,
                           f"reusing warm cluster {w.cluster_id} of job {w.from_job} "
                           f"on gate {w.gate}",
                           {"cluster_id": w.cluster_id, "token_hash": tokens.hash_token(token),
                            "flavor": w.flavor, "price_per_hour": w.price_per_hour}),
                WakeIdle(w.cluster_id),
            ]
            return out
        token = self.new_token()
        cluster_id = f"{job.id}-{job.restarts}"
        r = job.spec.resources
        self.live[job.id] = _Live(since=now)
        out.append(Transition(job.id, S.PROVISIONING,
                              f"creating a {r.nodes}-node cluster on gate {ev.gate}",
                              {"cluster_id": cluster_id, "token_hash": tokens.hash_token(token)}))
        out.append(CreateCluster(ev.gate, ClusterRequest(
            cluster_id=cluster_id, job_id=job.id, owner=job.owner, nodes=r.nodes,
            cpus_per_node=r.cpus_per_node, gpus_per_node=r.gpus_per_node, mem_mb=r.mem_mb,
            flavor=job.spec.flavor, control_url=self.settings.control_url,
            ca_pem=self.settings.ca_pem, token=token)))
        return out

    def _on_ClusterCreated(self, ev: ClusterCreated, now: float) -> list[Instruction]:
        self._gate_failures.pop(ev.job_id, None)
        return [Update(ev.job_id, {"flavor": ev.flavor, "price_per_hour": ev.price_per_hour})]

    def _on_CreateFailed(self, ev: CreateFailed, now: float) -> list[Instruction]:
        job = ev.job
        self.warm.unpromise(job.id)
        if job.state not in (S.SCHEDULED, S.PROVISIONING):
            return []  # cancelled (or lost) meanwhile: whoever did that dropped the cluster
        out = self._let_go(job, delete=True)
        revoke: dict[str, Any] = {"token_hash": None, "cluster_id": None}
        if ev.kind == "capacity":
            self._capacity_wait[job.id] = self.releases
            out.append(Transition(job.id, S.QUEUED, f"waiting for capacity: {ev.reason}", revoke))
            return out
        if ev.kind == "gate":
            self._gate_failures.setdefault(job.id, {})[ev.gate] = now
            if job.spec.gate is None and self.allowed_gates(job, sorted(ev.gates), now):
                out.append(Transition(job.id, S.QUEUED,
                                      f"gate {ev.gate} failed: {ev.reason}; "
                                      "re-planned on another gate", revoke))
                return out
            self._gate_failures.pop(job.id, None)
            out.append(Transition(job.id, S.FAILED, ev.reason, {"token_hash": None}))
            return out
        why = ev.reason if ev.kind == "storage" else f"provisioning failed: {ev.reason}"
        out.append(Transition(job.id, S.FAILED, why, {"token_hash": None}))
        return out

    # -- agents -----------------------------------------------------------------------

    def _on_AgentHello(self, ev: AgentHello, now: float) -> list[Instruction]:
        job = ev.job
        if not 0 <= ev.rank < job.spec.resources.nodes:
            raise ValidationError("rank", ev.rank, f"0..{job.spec.resources.nodes - 1}")
        live = self.live.setdefault(job.id, _Live(since=now))
        live.hellos[ev.rank] = ev.node_name
        live.last_seen[ev.rank] = now
        out: list[Instruction] = []
        if ev.facts is not None:
            live.facts[ev.rank] = ev.facts
            why = nodes_lack(job, live.facts, live.hellos)
            if why is not None and job.state in (S.PROVISIONING, S.STAGING_IN):
                out += self._let_go(job, delete=True)
                out.append(Transition(job.id, S.FAILED, why, {"token_hash": None}))
                return out
        if job.state == S.PROVISIONING and len(live.hellos) == job.spec.resources.nodes:
            names = [live.hellos[r] for r in range(job.spec.resources.nodes)]
            out.append(Transition(job.id, S.STAGING_IN, "every node's agent called in",
                                  {"node_names": names}))
        return out

    def _on_Heartbeat(self, ev: Heartbeat, now: float) -> list[Instruction]:
        job, rank = ev.job, ev.rank
        live = self.live.get(job.id)
        if live is not None:
            live.last_seen[rank] = now
        out: list[Instruction] = []
        if job.state.is_terminal() or not job.state.has_cluster():
            answer = HeartbeatAnswer(state=job.state, action="stop")
            w = self.warm.parked_for(job, rank)
            if w is not None:
                answer.action = "idle"
                if w.idle_hashes[rank] is None:  # handed out once; a second caller gets nothing
                    hashes = list(w.idle_hashes)
                    credential = self.new_token()
                    hashes[rank] = tokens.hash_token(credential)
                    out.append(PutWarm(self.warm.put(replace(w, idle_hashes=tuple(hashes)))))
                    answer.idle = IdleGrant(cluster_id=w.cluster_id, credential=credential)
                    if None not in hashes:  # every node has its credential: the token is done
                        out.append(Update(job.id, {"token_hash": None}))
            return [*out, Reply(answer)]
        answer = HeartbeatAnswer(state=job.state,
                                 action="wait" if job.state == S.PROVISIONING else "run",
                                 warm=self.warm.idle_timeout(job.gate) > 0)
        ck = self.checkpoints.get(job.id)
        if ck is not None and rank in ck.ranks_left:
            answer.checkpoint = CheckpointOrder(version=ck.version, id=ck.id)
        if ck is not None and ck.after is not None and ck.after.notice:
            answer.notice = ck.after.notice
        if job.spec.signal and job.state == S.RUNNING and job.started_at is not None:
            name, before_s = parse_signal(job.spec.signal)
            due = job.started_at.timestamp() + max(0, job.spec.resources.time_limit_s - before_s)
            if now >= due and self.checkpoints.signal_due(job.id, rank):
                answer.signal = name
        return [Reply(answer)]

    def _on_ResultStored(self, ev: ResultStored, now: float) -> list[Instruction]:
        job = ev.job
        if not job.state.has_cluster():  # only a live attempt's bytes become a result
            raise PermissionDeniedError(
                f"job {job.id} is {job.state.value}: no attempt of it may store a result now")
        return [Update(job.id, {"result_digests": {**job.result_digests, ev.path: ev.sha256}})]

    def _on_AgentState(self, ev: AgentState, now: float) -> list[Instruction]:
        if ev.state == ev.job.state and ev.state in (S.STAGING_IN, S.STAGING_OUT):
            # the agent telling how far staging got: an event, not a change of state
            return [Note(ev.job.id, ev.reason or f"agent: {ev.state.value.lower()}")]
        if ev.state not in (S.RUNNING, S.STAGING_OUT):
            raise ValidationError("state", ev.state.value, "RUNNING or STAGING_OUT")
        return [Transition(ev.job.id, ev.state, ev.reason or f"agent: {ev.state.value.lower()}")]

    def _on_AgentExited(self, ev: AgentExited, now: float) -> list[Instruction]:
        job = ev.job
        if job.state.is_terminal() or not job.state.has_cluster():
            return []
        info = ev.cluster
        if self.exit_needs_cluster(job, ev.exit_code, ev.timed_out) and info is not None \
                and info.state not in ("creating", "running"):
            after = self.checkpoints.after(job.id)
            if after is not None and after.notice == "preempt":
                why = f"{after.reason}: nodes reclaimed before the checkpoint was complete"
            else:
                why = "node lost: " + (info.reason or "the cluster failed")
            return self._lose(job, f"{why} (the payload then exited with code {ev.exit_code})",
                              now)
        if ev.timed_out:
            new, why = S.TIMEOUT, ev.reason or "time limit reached"
        elif ev.exit_code == 0 and ev.output_problems:
            # the payload succeeded but its result is not saved: the cluster goes, so
            # would the result; the user must hear it as a failure, not find it missing
            new, why = S.FAILED, ev.reason or "; ".join(ev.output_problems)
        elif ev.exit_code == 0:
            new, why = S.SUCCEEDED, ev.reason or "exit code 0"
        else:
            new, why = S.FAILED, ev.reason or f"exit code {ev.exit_code}"
        out: list[Instruction] = []
        if new == S.SUCCEEDED and job.state != S.STAGING_OUT:
            out.append(Transition(job.id, S.STAGING_OUT, "collecting outputs"))
        ended = job.model_copy(update={"state": new, "exit_code": ev.exit_code})
        parked = self.warm.park(ended, now)
        # a parked cluster's nodes still need the token for their idle credential
        out.append(Transition(job.id, new, why, {"exit_code": ev.exit_code} if parked else
                              {"exit_code": ev.exit_code, "token_hash": None}))
        if self._forget(job.id):
            out.append(SaveCheckpoint(job.id, None))
        if parked is not None:
            out.append(PutWarm(parked))
            out += self._let_go(job, delete=False)
        else:
            out += self._let_go(job, delete=True)
        return out

    def _on_IdleNext(self, ev: IdleNext, now: float) -> list[Instruction]:
        """An idle node's one call: ``assign`` (job id and token), ``wait`` or ``stop``."""
        w = self.warm.rows.get(ev.cluster_id)
        expected = w.idle_hashes[ev.rank] if w is not None and 0 <= ev.rank < w.nodes else None
        if w is None or expected is None or not tokens.tokens_equal(
                tokens.hash_token(ev.credential), expected):
            raise PermissionDeniedError("this credential reaches no idle node")
        if not w.assigned_job:
            return [Reply({"action": "wait"})]
        h = self.warm.handoff(ev.cluster_id)
        if h is None or h.job_id != w.assigned_job:
            return [Reply({"action": "stop"})]  # the hand-over was lost in a restart
        h.picked.add(ev.rank)
        out: list[Instruction] = []
        if len(h.picked) == w.nodes:  # every node has the job: no longer idle
            self.warm.drop(ev.cluster_id)
            out.append(DropWarm(ev.cluster_id))
        return [*out, Reply({"action": "assign", "job_id": h.job_id, "token": h.token})]

    # -- users ------------------------------------------------------------------------

    def _on_CancelAsked(self, ev: CancelAsked, now: float) -> list[Instruction]:
        job = ev.job
        if job.state.is_terminal():
            raise ConflictError(f"job {job.id} is already {job.state.value}")
        out: list[Instruction] = [Transition(job.id, S.CANCELLED, f"cancelled by {ev.by}",
                                             {"token_hash": None})]
        if self._forget(job.id):
            out.append(SaveCheckpoint(job.id, None))
        return out + self._let_go(job, delete=True)

    def _on_HoldAsked(self, ev: HoldAsked, now: float) -> list[Instruction]:
        job = ev.job
        if job.state != S.QUEUED:
            what = "held" if ev.held else "released"
            raise ConflictError(f"job {job.id} is {job.state.value}: only a QUEUED job can be "
                                f"{what}")
        if job.held == ev.held:
            return []
        return [Update(job.id, {"held": ev.held}), Replan()]

    def _on_Impossible(self, ev: Impossible, now: float) -> list[Instruction]:
        if ev.job.state != S.QUEUED:
            return []
        return [Transition(ev.job.id, S.CANCELLED, f"can never run: {ev.reason}",
                           {"token_hash": None})]

    def _on_OverBudget(self, ev: OverBudget, now: float) -> list[Instruction]:
        """A queued job the budget can never hold (the limit was lowered under it) ends;
        one already on a cluster committed its cost when it started and runs on."""
        if ev.job.state != S.QUEUED:
            return []
        return [Transition(ev.job.id, S.CANCELLED, f"over budget: {ev.reason}",
                           {"token_hash": None})]

    def _on_UpstreamChanged(self, ev: UpstreamChanged, now: float) -> list[Instruction]:
        """A queued job whose dependency can no longer hold is cancelled, never left waiting.

        Its own dependants follow: the service hands their facts back in the
        next ``UpstreamChanged``, since this cancellation ends a job too.
        """
        out: list[Instruction] = []
        for job in ev.jobs:
            if job.state != S.QUEUED:
                continue
            why = never_met(job, ev.upstream)
            if why is not None:
                self._forget(job.id)
                out.append(Transition(job.id, S.CANCELLED, why, {"token_hash": None}))
        return out

    def _on_CheckpointAsked(self, ev: CheckpointAsked, now: float) -> list[Instruction]:
        ck, opened = self._open(ev.job, ev.reason, now, self.new_id())
        out: list[Instruction] = [SaveCheckpoint(ev.job.id, ck)] if opened else []
        return [*out, Reply({"version": ck.version, "id": ck.id})]

    def _on_RequeueAsked(self, ev: RequeueAsked, now: float) -> list[Instruction]:
        job = ev.job
        if not job.state.has_cluster():
            raise ConflictError(f"job {job.id} is {job.state.value}: only a job that holds "
                                "a cluster can be requeued")
        reason = f"requeued by {ev.by}"
        if job.state == S.RUNNING:
            return self._then(job, After("requeue", reason, now + ev.wait_s, counted=False),
                              now, self.new_id())
        return self._lose(job, reason, now, counted=False)

    def _on_CancelAfterCheckpoint(self, ev: CancelAfterCheckpoint,
                                  now: float) -> list[Instruction]:
        job = ev.job
        if job.state != S.RUNNING:
            return self._on_CancelAsked(CancelAsked(job, ev.by), now)
        return self._then(job, After("cancel", f"cancelled by {ev.by}", now + ev.wait_s),
                          now, self.new_id())

    def _on_Preempted(self, ev: Preempted, now: float) -> list[Instruction]:
        """A preemption notice: checkpoint, then requeue; the gate reclaims the nodes later."""
        job = ev.job
        reason = f"preempted (notice of {ev.notice_s:g}s)"
        if job.state == S.RUNNING:
            return self._then(job, After("requeue", reason, now + ev.notice_s,
                                         notice="preempt"), now, self.new_id())
        if job.state == S.STAGING_OUT:  # collecting outputs: it may be done before the reclaim
            return []
        return self._lose(job, reason, now)

    def _on_CheckpointPart(self, ev: CheckpointPart, now: float) -> list[Instruction]:
        job = ev.job
        ck = self.checkpoints.part(job.id, ev.version, ev.ck_id, ev.rank, list(ev.files))
        if ck.ranks_left:
            return [SaveCheckpoint(job.id, ck), Reply({"committed": False,
                                                       "version": ev.version})]
        record = latest_record(ck, job.restarts,
                               datetime.fromtimestamp(now, UTC).isoformat(), now)
        out: list[Instruction] = [
            WriteLatest(job.id, record),
            Update(job.id, {"checkpoint_version": ck.version}),
            SaveCheckpoint(job.id, None),
            PruneCheckpoint(job.id, ck.version),
        ]
        if ck.after is not None:
            done = job.model_copy(update={"checkpoint_version": ck.version})
            out += self._run_after(done, ck.after, f"checkpoint v{ck.version} saved", now)
        return [*out, Reply({"committed": True, "version": ev.version, "latest": record})]

    # -- the watch ----------------------------------------------------------------------

    def _on_Tick(self, ev: Tick, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        jobs = {j.id: j for j in ev.jobs}
        for ck in self.checkpoints.expired(now):
            out.append(SaveCheckpoint(ck.job_id, None))
            job = jobs.get(ck.job_id)
            if ck.after is not None and job is not None:
                latest = f"v{job.checkpoint_version}" if job.checkpoint_version else "none"
                out += self._run_after(job, ck.after,
                                       f"checkpoint not complete in time; latest is {latest}",
                                       now)
        settings = self.settings
        ended = {i.job_id for i in out if isinstance(i, Transition)}
        for job in ev.jobs:
            if job.id in ended:
                continue
            live = self.live.setdefault(job.id, _Live(since=now))
            if job.state == S.PROVISIONING:
                if now - live.since > settings.provisioning_timeout_s:
                    out += self._lose(job, "the cluster's agents did not all call in", now)
                continue
            stale = [r for r, t in live.last_seen.items()
                     if now - t > settings.heartbeat_timeout_s]
            if stale:
                names = ", ".join(live.hellos.get(r, str(r)) for r in sorted(stale))
                out += self._lose(job, f"node lost: no heartbeat from {names}", now)
                continue
            if job.state == S.RUNNING and job.started_at is not None:
                started = job.started_at.timestamp()
                if now - started > job.spec.resources.time_limit_s + settings.time_limit_grace_s:
                    out.append(Transition(job.id, S.TIMEOUT,
                                          "time limit reached (enforced by the control plane)",
                                          {"token_hash": None}))
                    if self._forget(job.id):
                        out.append(SaveCheckpoint(job.id, None))
                    out += self._let_go(job, delete=True)
                    continue
                why = self.checkpoints.due(job.id, started, job.spec.resources.time_limit_s,
                                           job.spec.checkpoint_every_s, now)
                if why is not None:
                    ck, _ = self._open(job, why, now, self.new_id())
                    out.append(SaveCheckpoint(job.id, ck))
            if ev.listed is not None and job.gate in ev.listed_gates and job.cluster_id:
                out += self._liveness(job, ev.listed.get(job.cluster_id), now)
        out += self._expire_warm(jobs, now)
        return out

    def _liveness(self, job: Job, info: ClusterInfo | None, now: float) -> list[Instruction]:
        """What the gate's listing says of a job's cluster."""
        if job.state not in (S.STAGING_IN, S.RUNNING, S.STAGING_OUT):
            return []
        if info is not None and info.state in ("creating", "running"):
            return []
        if job.state == S.STAGING_OUT and info is not None and \
                any(n.rank == 0 and n.alive for n in info.nodes):
            # the payload has exited and node 0 alone collects the outputs: the other
            # nodes are no longer needed (a non-zero exit caused by their loss is
            # requeued when node 0 reports it)
            return []
        after = self.checkpoints.after(job.id)
        if after is not None and after.notice == "preempt":
            why = f"{after.reason}: nodes reclaimed before the checkpoint was complete"
        else:
            why = "node lost: " + (info.reason if info is not None and info.reason
                                   else "the gate no longer has the cluster")
        return self._lose(job, why, now)

    def _expire_warm(self, holding: dict[str, Job], now: float) -> list[Instruction]:
        """Parked clusters past their gate's idle timeout, and hand-overs gone stale."""
        out: list[Instruction] = []
        for w in list(self.warm.rows.values()):
            if w.assigned_job:
                job = holding.get(w.assigned_job)
                if job is None or job.cluster_id != w.cluster_id:
                    out += self._discard_warm(w, f"job {w.assigned_job} let go of it")
                continue
            timeout = self.warm.idle_timeout(w.gate)
            if now - w.since >= timeout:
                out += self._discard_warm(w, f"idle for {timeout:g}s")
        return out

    # -- the restart policy -------------------------------------------------------------

    def _lose(self, job: Job, reason: str, now: float, *, counted: bool = True
              ) -> list[Instruction]:
        """The job's attempt is over (node lost, preempted, requeued): requeue it or fail it.

        The attempt's token is revoked in the same transaction, so no agent of
        this attempt can report for the next one.
        """
        if job.state.is_terminal() or job.state == S.QUEUED:
            return []
        out: list[Instruction] = []
        if self._forget(job.id):
            out.append(SaveCheckpoint(job.id, None))
        out += self._let_go(job, delete=True)
        before = list(job.lost_attempts)
        limit = self.restart_limit(job)
        if counted and len(before) >= limit:
            attempts = "; ".join(f"attempt {i}: {r}" for i, r in
                                 enumerate([*before, reason], start=1))
            out.append(Transition(
                job.id, S.FAILED,
                f"gave up after {len(before)} restart(s) (max-restarts {limit}): {attempts}",
                {"token_hash": None, "lost_attempts": [*before, reason]}))
            return out
        source = (f"from checkpoint v{job.checkpoint_version}" if job.checkpoint_version
                  else "from the start (no checkpoint yet)")
        fields: dict[str, Any] = {"restarts": job.restarts + 1, "cluster_id": None,
                                  "token_hash": None}
        if counted:
            why = (f"{LOST_TAG}{reason}{_SEP}requeued {source}, restart "
                   f"{len(before) + 1} of {limit}")
            fields["lost_attempts"] = [*before, reason]
        else:
            why = f"{reason}{_SEP}requeued {source}"
        out.append(Transition(job.id, S.QUEUED, why, fields))
        return out

    def _run_after(self, job: Job, after: After, how: str, now: float) -> list[Instruction]:
        if job.state.is_terminal():
            return []
        if after.action == "requeue" and job.state == S.STAGING_OUT:
            # the payload ended while its checkpoint was taken: its outcome stands, and
            # running it again from the checkpoint would run its last steps twice
            return []
        if after.action == "cancel":
            out: list[Instruction] = [Transition(job.id, S.CANCELLED, f"{after.reason} ({how})",
                                                 {"token_hash": None})]
            if self._forget(job.id):
                out.append(SaveCheckpoint(job.id, None))
            return out + self._let_go(job, delete=True)
        return self._lose(job, f"{after.reason} ({how})", now, counted=after.counted)

    # -- helpers ----------------------------------------------------------------------

    def _open(self, job: Job, reason: str, now: float, new_id: str
              ) -> tuple[OpenCheckpoint, bool]:
        if job.state != S.RUNNING:
            raise ConflictError(f"job {job.id} is {job.state.value}: only a RUNNING job "
                                "can take a checkpoint")
        return self.checkpoints.open(job.id, job.nodes, job.checkpoint_version, reason, now,
                                     new_id)

    def _then(self, job: Job, after: After, now: float, new_id: str) -> list[Instruction]:
        ck = self.checkpoints.then(job.id, job.nodes, job.checkpoint_version, after, now, new_id)
        return [SaveCheckpoint(job.id, ck)]

    def _forget(self, job_id: str) -> bool:
        self._capacity_wait.pop(job_id, None)
        return self.checkpoints.forget(job_id)

    def _let_go(self, job: Job, *, delete: bool) -> list[Instruction]:
        """The job no longer holds its cluster: forget it, charge its use, re-plan."""
        self.live.pop(job.id, None)
        self.releases += 1
        out: list[Instruction] = [Released(job), Replan()]
        if delete and job.gate and job.cluster_id:
            out.insert(0, DeleteCluster(job.gate, job.cluster_id))
        return out

    def _discard_warm(self, w: WarmCluster, why: str) -> list[Instruction]:
        self.warm.drop(w.cluster_id)
        self.releases += 1
        return [DropWarm(w.cluster_id), Update(w.from_job, {"token_hash": None}),
                WakeIdle(w.cluster_id), DeleteCluster(w.gate, w.cluster_id), Replan()]



MPI_NAMES = {"mpich": "MPICH", "openmpi": "Open MPI"}


def needs_mpi(job: Job) -> bool:
    """Whether the job's layout needs its MPI on every node (a parallel layout, or a
    non-default MPI asked for by name)."""
    spec = job.spec
    return spec.layout.mpi != "mpich" or spec.layout.ranks_per_node > 1 \
        or spec.resources.nodes > 1


def nodes_lack(job: Job, facts: dict[int, NodeFacts], names: dict[int, str]) -> str | None:
    """Why the nodes that reported cannot run the job's layout, or None.

    The truth is what each node's agent found on its own machine: a node
    without the job's MPI, or nodes with different versions of it (their
    daemons would not talk to each other), end the job at once.
    """
    if not needs_mpi(job):
        return None
    impl = job.spec.layout.mpi
    label = MPI_NAMES.get(impl, impl)
    for rank in sorted(facts):
        if facts[rank].mpi.get(impl) is None:
            found = ", ".join(f"{MPI_NAMES.get(k, k)} {v}" for k, v in
                              sorted(facts[rank].mpi.items()) if v) or "no MPI"
            return (f"node {rank} ({names.get(rank, '?')}) has no {label}, which the job "
                    f"asks for (--mpi={impl}); its agent found: {found}")
    versions = {rank: facts[rank].mpi[impl] for rank in sorted(facts)}
    if len(set(versions.values())) > 1:
        return (f"the nodes have different {label} versions: " + ", ".join(
            f"node {r} {v}" for r, v in versions.items()) + "; a job's nodes need one")
    return None
