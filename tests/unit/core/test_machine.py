"""The job machine, read like the lifecycle table: an event in, the instructions out.

No store, no Ray, no process, no sleep: every job is a ``Job`` record as the
service would read it, every clock reading is the ``now`` passed in.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from skyport import tokens
from skyport.core.checkpoints import CHECKPOINT_TIMEOUT_S, OpenCheckpoint
from skyport.core.dependencies import Upstream, array_upstream
from skyport.core.machine import LOST_TAG, JobMachine, MachineSettings
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
from skyport.errors import ConflictError, PermissionDeniedError, ValidationError
from skyport.gate import ClusterInfo, NodeInfo
from skyport.models import Job, JobSpec, JobState, Layout, Resources
from skyport.protocol import HeartbeatAnswer, NodeFacts
from skyport.store import WarmCluster

S = JobState
T0 = 1_000_000.0  # the machine's "now" at the start of every test


def make_job(state: JobState = S.QUEUED, *, id: str = "a", nodes: int = 1,
             owner: str = "alice", **fields: Any) -> Job:
    spec_fields = {k: fields.pop(k) for k in ("checkpoint_every_s", "max_restarts", "signal",
                                              "gate_choice", "dependency") if k in fields}
    gate_choice = spec_fields.pop("gate_choice", None)
    spec = JobSpec(script="#!/bin/bash\ntrue\n", gate=gate_choice,
                   resources=Resources(nodes=nodes, cpus_per_node=2, time_limit_s=600),
                   layout=Layout(), **spec_fields)
    holding = state.has_cluster() or state.is_terminal()
    base: dict[str, Any] = {
        "id": id, "owner": owner, "spec": spec, "state": state,
        "submitted_at": datetime.fromtimestamp(T0 - 100, UTC),
        "gate": "local" if state != S.QUEUED else None,
        "cluster_id": f"{id}-0" if holding else None,
        "node_names": [f"n{r}" for r in range(nodes)] if holding else [],
    }
    if state in (S.RUNNING, S.STAGING_OUT) or state.is_terminal():
        base["started_at"] = datetime.fromtimestamp(T0 - 10, UTC)
    base.update(fields)
    return Job(**base)


def machine(**settings: Any) -> JobMachine:
    settings.setdefault("heartbeat_timeout_s", 10_000.0)  # tests about heartbeats set it
    counter = itertools.count()
    ids = itertools.count(1)
    return JobMachine(MachineSettings(control_url="https://cp", ca_pem="CA", **settings),
                      idle_timeouts={"local": 0.0},
                      new_token=lambda: f"tok{next(counter)}",
                      new_id=lambda: f"ck{next(ids)}")


def transitions(out: list[Instruction]) -> list[tuple[str, JobState]]:
    return [(i.job_id, i.state) for i in out if isinstance(i, Transition)]


def only(out: list[Instruction], kind: type) -> Any:
    found = [i for i in out if isinstance(i, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {out}"
    return found[0]


def reply(out: list[Instruction]) -> Any:
    return only(out, Reply).answer


def running(m: JobMachine, nodes: int = 1, **fields: Any) -> Job:
    """A RUNNING job whose agents have all said hello to ``m`` at T0."""
    job = make_job(S.RUNNING, nodes=nodes, **fields)
    for rank in range(nodes):
        m.handle(AgentHello(job, rank, f"n{rank}"), T0)
    return job


# -- the happy path, one transition at a time ---------------------------------------


def test_planned_job_is_scheduled_and_provisioned() -> None:
    m = machine()
    out = m.handle(Planned(((make_job(), "local"),)), T0)
    assert out == [Transition("a", S.SCHEDULED, "planned on gate local", {"gate": "local"}),
                   Provision("a", "local", ())]


def test_planned_job_that_was_cancelled_meanwhile_is_left_alone() -> None:
    assert machine().handle(Planned(((make_job(S.CANCELLED), "local"),)), T0) == []


def test_provision_creates_a_cluster_with_a_fresh_token() -> None:
    m = machine()
    job = make_job(S.SCHEDULED, cluster_id=None)
    out = m.handle(ProvisionReady(job, "local"), T0)
    t = only(out, Transition)
    assert (t.state, t.fields["cluster_id"]) == (S.PROVISIONING, "a-0")
    assert t.fields["token_hash"] == tokens.hash_token("tok0")
    create = only(out, CreateCluster)
    assert create.gate == "local" and create.request.token == "tok0"
    assert (create.request.nodes, create.request.cpus_per_node) == (1, 2)
    assert create.request.control_url == "https://cp"


def test_cluster_created_records_flavor_and_price() -> None:
    out = machine().handle(ClusterCreated("a", "a-0", "small", 0.5), T0)
    assert out == [Update("a", {"flavor": "small", "price_per_hour": 0.5})]


def test_every_hello_then_staging_in_with_node_names() -> None:
    m = machine()
    job = make_job(S.PROVISIONING, nodes=2, node_names=[])
    assert m.handle(AgentHello(job, 1, "n1"), T0) == []
    out = m.handle(AgentHello(job, 0, "n0"), T0)
    assert out == [Transition("a", S.STAGING_IN, "every node's agent called in",
                              {"node_names": ["n0", "n1"]})]


def _facts(**mpi: str | None) -> NodeFacts:
    return NodeFacts(cores=4, mem_mb=1000, mpi=mpi, python="3.11.7", skyport="0.1.0")


def test_a_node_without_the_jobs_mpi_fails_the_job_at_hello() -> None:
    m = machine()
    job = make_job(S.PROVISIONING, nodes=2, node_names=[])
    job = job.model_copy(update={"spec": job.spec.model_copy(
        update={"layout": Layout(mpi="openmpi", ranks_per_node=1)})})
    assert m.handle(AgentHello(job, 0, "n0", _facts(mpich="5.0.2", openmpi="5.0.3")), T0) == []
    out = m.handle(AgentHello(job, 1, "n1", _facts(mpich="5.0.2", openmpi=None)), T0)
    failed = only(out, Transition)
    assert (failed.state, failed.fields) == (S.FAILED, {"token_hash": None})
    assert failed.reason == ("node 1 (n1) has no Open MPI, which the job asks for "
                             "(--mpi=openmpi); its agent found: MPICH 5.0.2")
    assert only(out, DeleteCluster).cluster_id == "a-0"
    assert "a" not in m.live  # the cluster is let go


def test_nodes_with_different_mpi_versions_are_refused() -> None:
    m = machine()
    job = make_job(S.PROVISIONING, nodes=2, node_names=[])
    m.handle(AgentHello(job, 0, "n0", _facts(mpich="5.0.2")), T0)
    out = m.handle(AgentHello(job, 1, "n1", _facts(mpich="4.2.0")), T0)
    assert only(out, Transition).reason == (
        "the nodes have different MPICH versions: node 0 5.0.2, node 1 4.2.0; a job's "
        "nodes need one")


def test_a_serial_job_needs_no_mpi_and_older_agents_are_not_checked() -> None:
    m = machine()
    job = make_job(S.PROVISIONING, nodes=1, node_names=[])
    out = m.handle(AgentHello(job, 0, "n0", _facts(mpich=None, openmpi=None)), T0)
    assert transitions(out) == [("a", S.STAGING_IN)]
    two = make_job(S.PROVISIONING, id="b", nodes=2, node_names=[])
    m.handle(AgentHello(two, 0, "n0"), T0)  # no facts: nothing to decide on
    assert transitions(m.handle(AgentHello(two, 1, "n1"), T0)) == [("b", S.STAGING_IN)]


def test_hello_from_a_rank_outside_the_job_is_refused() -> None:
    with pytest.raises(ValidationError):
        machine().handle(AgentHello(make_job(S.PROVISIONING), 3, "x"), T0)


def test_agent_moves_the_job_to_running_and_staging_out_only() -> None:
    m = machine()
    assert transitions(m.handle(AgentState(make_job(S.STAGING_IN), S.RUNNING, ""), T0)) == \
        [("a", S.RUNNING)]
    with pytest.raises(ValidationError):
        m.handle(AgentState(make_job(S.RUNNING), S.SUCCEEDED, ""), T0)


def test_heartbeat_answers() -> None:
    m = machine()
    wait = reply(m.handle(Heartbeat(make_job(S.PROVISIONING), 0), T0))
    assert wait == HeartbeatAnswer(state=S.PROVISIONING, action="wait")
    run = reply(m.handle(Heartbeat(make_job(S.RUNNING), 0), T0))
    assert (run.action, run.checkpoint, run.warm) == ("run", None, False)
    stop = reply(m.handle(Heartbeat(make_job(S.SUCCEEDED), 0), T0))
    assert stop.action == "stop"


@pytest.mark.parametrize("code, timed_out, state", [
    (0, False, S.SUCCEEDED), (3, False, S.FAILED), (137, True, S.TIMEOUT)])
def test_exit_ends_the_job_revokes_its_token_and_deletes_the_cluster(
        code: int, timed_out: bool, state: JobState) -> None:
    m = machine()
    out = m.handle(AgentExited(running(m), code, timed_out, ""), T0)
    expected = [("a", S.STAGING_OUT)] if state == S.SUCCEEDED else []
    assert transitions(out) == [*expected, ("a", state)]
    final = [i for i in out if isinstance(i, Transition)][-1]
    assert final.fields == {"exit_code": code, "token_hash": None}
    assert only(out, DeleteCluster) == DeleteCluster("local", "a-0")
    assert only(out, Released).job.id == "a" and Replan() in out
    assert "a" not in m.live


def test_exit_code_zero_with_an_output_problem_ends_the_job_failed() -> None:
    m = machine()
    out = m.handle(AgentExited(running(m), 0, False, "", output_problems=(
        "outputs not saved: out.bin (the disk is full)",)), T0)
    assert transitions(out) == [("a", S.FAILED)]
    final = [i for i in out if isinstance(i, Transition)][-1]
    assert final.reason == "outputs not saved: out.bin (the disk is full)"
    assert final.fields == {"exit_code": 0, "token_hash": None}
    assert only(out, DeleteCluster) == DeleteCluster("local", "a-0")  # after the upload ended


def test_staging_progress_is_a_note_not_a_transition() -> None:
    m = machine()
    job = running(m).model_copy(update={"state": S.STAGING_OUT})
    assert m.handle(AgentState(job, S.STAGING_OUT, "staged out 1.2 GB of 3.4 GB"), T0) == [
        Note("a", "staged out 1.2 GB of 3.4 GB")]
    staging_in = job.model_copy(update={"state": S.STAGING_IN})
    assert m.handle(AgentState(staging_in, S.STAGING_IN, "staged in 1 B of 2 B"), T0) == [
        Note("a", "staged in 1 B of 2 B")]


def test_exit_of_a_job_already_over_changes_nothing() -> None:
    assert machine().handle(AgentExited(make_job(S.CANCELLED), 0, False, ""), T0) == []


def test_cancel_revokes_and_deletes() -> None:
    out = machine().handle(CancelAsked(make_job(S.RUNNING), "alice"), T0)
    assert out[0] == Transition("a", S.CANCELLED, "cancelled by alice", {"token_hash": None})
    assert DeleteCluster("local", "a-0") in out


def test_cancel_of_a_queued_job_deletes_nothing() -> None:
    out = machine().handle(CancelAsked(make_job(S.QUEUED), "alice"), T0)
    assert transitions(out) == [("a", S.CANCELLED)]
    assert not [i for i in out if isinstance(i, DeleteCluster)]


def test_cancel_of_an_ended_job_is_a_conflict() -> None:
    with pytest.raises(ConflictError):
        machine().handle(CancelAsked(make_job(S.SUCCEEDED), "alice"), T0)


# -- provisioning failures ----------------------------------------------------------


def test_capacity_refusal_requeues_and_waits_for_a_release() -> None:
    m = machine()
    job = make_job(S.PROVISIONING)
    out = m.handle(CreateFailed(job, "local", "capacity", "no cores", frozenset({"local"})), T0)
    assert out[-1] == Transition("a", S.QUEUED, "waiting for capacity: no cores",
                                 {"token_hash": None, "cluster_id": None})
    queued = make_job(S.QUEUED)
    assert m.handle(Planned(((queued, "local"),)), T0) == []  # nothing released since
    m.handle(AgentExited(running(m, id="b"), 0, False, ""), T0)  # b lets its cluster go
    assert transitions(m.handle(Planned(((queued, "local"),)), T0)) == [("a", S.SCHEDULED)]


def test_gate_failure_replans_on_another_gate_then_fails_when_none_is_left() -> None:
    m = machine()
    gates = frozenset({"g1", "g2"})
    job = make_job(S.PROVISIONING, gate="g1")
    out = m.handle(CreateFailed(job, "g1", "gate", "quota", gates), T0)
    assert transitions(out) == [("a", S.QUEUED)]
    assert "re-planned on another gate" in out[-1].reason
    assert m.allowed_gates(make_job(), sorted(gates), T0) == ("g2",)
    out = m.handle(CreateFailed(make_job(S.PROVISIONING, gate="g2"), "g2", "gate", "stock",
                                gates), T0)
    assert out[-1] == Transition("a", S.FAILED, "stock", {"token_hash": None})


def test_failed_gates_are_forgotten_after_a_while() -> None:
    m = machine(gate_failure_memory_s=60)
    m.handle(CreateFailed(make_job(S.PROVISIONING, gate="g1"), "g1", "gate", "x",
                          frozenset({"g1", "g2"})), T0)
    assert m.allowed_gates(make_job(), ["g1", "g2"], T0 + 61) == ()


def test_a_job_that_names_its_gate_fails_with_the_gates_reason() -> None:
    job = make_job(S.PROVISIONING, gate_choice="local")
    out = machine().handle(CreateFailed(job, "local", "gate", "boom",
                                        frozenset({"local", "other"})), T0)
    assert transitions(out) == [("a", S.FAILED)]


def test_storage_failure_during_provisioning_fails_the_job() -> None:
    out = machine().handle(CreateFailed(make_job(S.SCHEDULED), "local", "storage",
                                        "input gone", frozenset({"local"})), T0)
    assert out[-1] == Transition("a", S.FAILED, "input gone", {"token_hash": None})


def test_create_failure_after_a_cancel_changes_nothing() -> None:
    out = machine().handle(CreateFailed(make_job(S.CANCELLED), "local", "gate", "x",
                                        frozenset({"local"})), T0)
    assert out == []


# -- the watch --------------------------------------------------------------------------


def test_provisioning_that_never_completes_is_requeued() -> None:
    m = machine(provisioning_timeout_s=180)
    job = make_job(S.PROVISIONING, node_names=[])
    m.handle(ProvisionReady(make_job(S.SCHEDULED, cluster_id=None), "local"), T0)
    assert transitions(m.handle(Tick((job,)), T0 + 100)) == []
    out = m.handle(Tick((job,)), T0 + 181)
    assert transitions(out) == [("a", S.QUEUED)]
    assert "did not all call in" in out[-1].reason


def test_silent_node_is_lost_and_the_job_requeued_from_the_start() -> None:
    m = machine(heartbeat_timeout_s=60)
    job = running(m, nodes=2)
    m.handle(Heartbeat(job, 0), T0 + 50)
    assert transitions(m.handle(Tick((job,)), T0 + 55)) == []
    out = m.handle(Tick((job,)), T0 + 61)
    t = only(out, Transition)
    assert t.state == S.QUEUED
    assert t.reason == (f"{LOST_TAG}node lost: no heartbeat from n1 | requeued from the start "
                        "(no checkpoint yet), restart 1 of 3")
    assert t.fields == {"restarts": 1, "cluster_id": None, "token_hash": None,
                        "lost_attempts": ["node lost: no heartbeat from n1"]}
    assert DeleteCluster("local", "a-0") in out


def test_time_limit_is_enforced_with_grace() -> None:
    m = machine(time_limit_grace_s=30)
    job = running(m)  # started T0 - 10, limit 600 s
    assert transitions(m.handle(Tick((job,)), T0 + 600)) == []
    out = m.handle(Tick((job,)), T0 + 621)
    assert out[0] == Transition("a", S.TIMEOUT,
                                "time limit reached (enforced by the control plane)",
                                {"token_hash": None})
    assert DeleteCluster("local", "a-0") in out


def test_gate_listing_without_the_cluster_is_a_lost_node() -> None:
    m = machine()
    job = running(m)
    out = m.handle(Tick((job,), listed={}, listed_gates=frozenset({"local"})), T0 + 1)
    assert transitions(out) == [("a", S.QUEUED)]
    assert "the gate no longer has the cluster" in out[-1].reason


def test_a_gate_that_did_not_answer_the_listing_loses_nothing() -> None:
    m = machine()
    job = running(m)
    assert transitions(m.handle(Tick((job,), listed={}, listed_gates=frozenset()), T0)) == []


def _cluster(state: str, alive: tuple[bool, ...], reason: str = "") -> ClusterInfo:
    return ClusterInfo(cluster_id="a-0", job_id="a", gate="local", flavor="f", state=state,
                       nodes=tuple(NodeInfo(r, f"n{r}", ok) for r, ok in enumerate(alive)),
                       reason=reason)


def test_node_loss_during_staging_out_is_ignored_while_node_0_collects() -> None:
    m = machine()
    job = running(m, nodes=2).model_copy(update={"state": S.STAGING_OUT})
    listed = {"a-0": _cluster("failed", (True, False), "node 1 died")}
    out = m.handle(Tick((job,), listed=listed, listed_gates=frozenset({"local"})), T0 + 1)
    assert transitions(out) == []


def test_node_0_lost_during_staging_out_requeues_from_the_checkpoint() -> None:
    m = machine()
    job = running(m, nodes=2).model_copy(update={"state": S.STAGING_OUT,
                                                 "checkpoint_version": 4})
    listed = {"a-0": _cluster("failed", (False, True), "node 0 died")}
    out = m.handle(Tick((job,), listed=listed, listed_gates=frozenset({"local"})), T0 + 1)
    t = only(out, Transition)
    assert t.state == S.QUEUED and "node 0 died" in t.reason
    assert "requeued from checkpoint v4" in t.reason


def test_non_zero_exit_after_a_lost_node_requeues_instead_of_failing() -> None:
    m = machine()
    job = running(m, nodes=2)
    assert m.exit_needs_cluster(job, 1, False)
    out = m.handle(AgentExited(job, 1, False, "", _cluster("failed", (True, False), "n1 gone")),
                   T0)
    t = only(out, Transition)
    assert t.state == S.QUEUED
    assert "node lost: n1 gone (the payload then exited with code 1)" in t.reason


def test_non_zero_exit_on_a_healthy_cluster_fails() -> None:
    m = machine()
    job = running(m, nodes=2)
    out = m.handle(AgentExited(job, 1, False, "", _cluster("running", (True, True))), T0)
    assert transitions(out) == [("a", S.FAILED)]
    assert not machine().exit_needs_cluster(make_job(S.RUNNING), 1, False)  # one node: no look


def test_max_restarts_exhausted_fails_listing_every_attempt() -> None:
    m = machine(heartbeat_timeout_s=60)
    job = running(m, nodes=2, max_restarts=2,
                  lost_attempts=["node lost: first", "node lost: second"], restarts=2)
    out = m.handle(Tick((job,)), T0 + 61)
    t = only(out, Transition)
    assert t.state == S.FAILED
    assert t.reason == ("gave up after 2 restart(s) (max-restarts 2): attempt 1: node lost: "
                        "first; attempt 2: node lost: second; attempt 3: node lost: no "
                        "heartbeat from n0, n1")
    assert t.fields["token_hash"] is None
    assert DeleteCluster("local", "a-0") in out


def test_the_control_planes_default_limit_applies_without_max_restarts() -> None:
    m = machine(max_node_loss_restarts=1)
    job = running(m, lost_attempts=["x"])
    assert m.restart_limit(job) == 1
    out = m.handle(Tick((job,), listed={}, listed_gates=frozenset({"local"})), T0)
    assert transitions(out) == [("a", S.FAILED)]


# -- checkpoints --------------------------------------------------------------------------


def test_checkpoint_opens_a_version_tells_each_node_and_commits_when_all_reported() -> None:
    m = machine()
    job = running(m, nodes=2, checkpoint_version=2)
    out = m.handle(CheckpointAsked(job, "requested by the job"), T0)
    assert reply(out) == {"version": 3, "id": "ck1"}
    assert only(out, SaveCheckpoint).checkpoint.version == 3
    beat = reply(m.handle(Heartbeat(job, 1), T0))
    assert (beat.checkpoint.version, beat.checkpoint.id) == (3, "ck1")
    out = m.handle(CheckpointPart(job, 3, "ck1", 1, (("v3/nodes/1/state", 10),)), T0 + 1)
    assert reply(out) == {"committed": False, "version": 3}
    assert reply(m.handle(Heartbeat(job, 1), T0)).checkpoint is None  # node 1 is done
    out = m.handle(CheckpointPart(job, 3, "ck1", 0, (("v3/shared/model", 5),)), T0 + 2)
    record = only(out, WriteLatest).record
    assert (record["version"], record["bytes"], record["took_s"]) == (3, 15, 2.0)
    assert [f["path"] for f in record["files"]] == ["v3/nodes/1/state", "v3/shared/model"]
    assert Update("a", {"checkpoint_version": 3}) in out
    assert SaveCheckpoint("a", None) in out and PruneCheckpoint("a", 3) in out
    assert reply(out)["committed"] is True


def test_a_part_for_a_version_that_is_not_open_is_refused() -> None:
    m = machine()
    job = running(m)
    with pytest.raises(ConflictError):
        m.handle(CheckpointPart(job, 1, "nope", 0, ()), T0)


def test_a_node_may_not_report_files_of_another_node() -> None:
    m = machine()
    job = running(m, nodes=2)
    m.handle(CheckpointAsked(job, "x"), T0)
    with pytest.raises(ValidationError):
        m.handle(CheckpointPart(job, 1, "ck1", 1, (("v1/nodes/0/secret", 1),)), T0)
    with pytest.raises(ValidationError):
        m.handle(CheckpointPart(job, 1, "ck1", 1, (("v1/nodes/1/../../x", 1),)), T0)


def test_only_a_running_job_takes_a_checkpoint() -> None:
    with pytest.raises(ConflictError):
        machine().handle(CheckpointAsked(make_job(S.STAGING_IN), "x"), T0)


def test_periodic_and_final_checkpoints_are_opened_by_the_tick() -> None:
    m = machine()
    job = running(m, checkpoint_every_s=60)  # started T0 - 10, limit 600
    assert not [i for i in m.handle(Tick((job,)), T0 + 40) if isinstance(i, SaveCheckpoint)]
    out = m.handle(Tick((job,)), T0 + 51)
    assert only(out, SaveCheckpoint).checkpoint.reason == "every 60s"
    m.handle(CheckpointPart(job, 1, "ck1", 0, ()), T0 + 52)
    out = m.handle(Tick((job,)), T0 + 581)  # 10 s before the limit
    assert only(out, SaveCheckpoint).checkpoint.reason == "time limit near"


def test_a_checkpoint_that_never_completes_is_dropped() -> None:
    m = machine()
    job = running(m, nodes=2)
    m.handle(CheckpointAsked(job, "x"), T0)
    out = m.handle(Tick((job,)), T0 + CHECKPOINT_TIMEOUT_S + 1)
    assert SaveCheckpoint("a", None) in out and transitions(out) == []
    assert m.checkpoints.get("a") is None


def test_signal_is_sent_once_per_node_before_the_limit() -> None:
    m = machine()
    job = running(m, nodes=2, signal="SIGUSR1@60")  # started T0-10, limit 600: due T0+530
    assert reply(m.handle(Heartbeat(job, 0), T0 + 500)).signal is None
    assert reply(m.handle(Heartbeat(job, 0), T0 + 531)).signal == "SIGUSR1"
    assert reply(m.handle(Heartbeat(job, 0), T0 + 532)).signal is None
    assert reply(m.handle(Heartbeat(job, 1), T0 + 533)).signal == "SIGUSR1"


# -- requeue, cancel after a checkpoint, preemption -------------------------------------


def test_requeue_by_hand_checkpoints_first_and_does_not_count() -> None:
    m = machine()
    job = running(m, checkpoint_version=1)
    out = m.handle(RequeueAsked(job, "alice", 60), T0)
    assert only(out, SaveCheckpoint).checkpoint.after.action == "requeue"
    out = m.handle(CheckpointPart(job, 2, "ck1", 0, ()), T0 + 3)
    t = only(out, Transition)
    assert t.state == S.QUEUED
    assert t.reason == "requeued by alice (checkpoint v2 saved) | requeued from checkpoint v2"
    assert "lost_attempts" not in t.fields and t.fields["restarts"] == 1


def test_requeue_of_a_job_still_being_set_up_is_immediate() -> None:
    out = machine().handle(RequeueAsked(make_job(S.STAGING_IN), "alice", 60), T0)
    assert transitions(out) == [("a", S.QUEUED)]


def test_requeue_of_a_queued_job_is_a_conflict() -> None:
    with pytest.raises(ConflictError):
        machine().handle(RequeueAsked(make_job(S.QUEUED), "alice", 60), T0)


def test_a_second_requeue_while_one_is_pending_is_a_conflict() -> None:
    m = machine()
    job = running(m)
    m.handle(RequeueAsked(job, "alice", 60), T0)
    with pytest.raises(ConflictError):
        m.handle(CancelAfterCheckpoint(job, "alice", 60), T0)


def test_cancel_after_checkpoint_cancels_once_the_checkpoint_is_saved() -> None:
    m = machine()
    job = running(m)
    assert transitions(m.handle(CancelAfterCheckpoint(job, "alice", 60), T0)) == []
    out = m.handle(CheckpointPart(job, 1, "ck1", 0, ()), T0 + 1)
    assert transitions(out) == [("a", S.CANCELLED)]
    assert "cancelled by alice (checkpoint v1 saved)" == only(out, Transition).reason


def test_cancel_after_checkpoint_of_a_job_not_running_cancels_at_once() -> None:
    out = machine().handle(CancelAfterCheckpoint(make_job(S.QUEUED), "alice", 60), T0)
    assert transitions(out) == [("a", S.CANCELLED)]


def test_preemption_with_a_checkpoint_requeues_from_it() -> None:
    m = machine()
    job = running(m, nodes=2)
    m.handle(Preempted(job, 20), T0)
    beat = reply(m.handle(Heartbeat(job, 0), T0 + 1))
    assert beat.notice == "preempt" and beat.checkpoint is not None
    m.handle(CheckpointPart(job, 1, "ck1", 0, ()), T0 + 2)
    out = m.handle(CheckpointPart(job, 1, "ck1", 1, ()), T0 + 3)
    t = only(out, Transition)
    assert t.state == S.QUEUED
    assert t.reason == (f"{LOST_TAG}preempted (notice of 20s) (checkpoint v1 saved) | "
                        "requeued from checkpoint v1, restart 1 of 3")


def test_preemption_without_a_checkpoint_in_time_requeues_from_the_last_one() -> None:
    m = machine()
    job = running(m, nodes=2, checkpoint_version=5)
    m.handle(Preempted(job, 20), T0)
    m.handle(CheckpointPart(job, 6, "ck1", 0, ()), T0 + 2)  # node 1 never reports
    out = m.handle(Tick((job,)), T0 + 21)
    t = only(out, Transition)
    assert t.state == S.QUEUED
    assert "checkpoint not complete in time; latest is v5" in t.reason
    assert "requeued from checkpoint v5" in t.reason


def test_nodes_reclaimed_before_the_preemption_checkpoint_is_complete() -> None:
    m = machine()
    job = running(m, nodes=2)
    m.handle(Preempted(job, 20), T0)
    out = m.handle(Tick((job,), listed={}, listed_gates=frozenset({"local"})), T0 + 5)
    t = only(out, Transition)
    assert "nodes reclaimed before the checkpoint was complete" in t.reason


def test_preemption_of_a_job_collecting_outputs_lets_it_finish() -> None:
    out = machine().handle(Preempted(make_job(S.STAGING_OUT), 20), T0)
    assert out == []


def test_preemption_of_a_job_still_being_set_up_requeues_at_once() -> None:
    out = machine().handle(Preempted(make_job(S.STAGING_IN), 20), T0)
    assert transitions(out) == [("a", S.QUEUED)]


def test_a_requeue_whose_payload_exited_meanwhile_keeps_its_outcome() -> None:
    m = machine()
    job = running(m)
    m.handle(RequeueAsked(job, "alice", 60), T0)
    staging_out = job.model_copy(update={"state": S.STAGING_OUT})
    out = m.handle(CheckpointPart(staging_out, 1, "ck1", 0, ()), T0 + 1)
    assert transitions(out) == []


# -- control-plane restarts --------------------------------------------------------------


def test_restart_requeues_jobs_being_set_up_and_adopts_live_clusters() -> None:
    m = machine()
    scheduled = make_job(S.SCHEDULED, id="s", cluster_id=None)
    provisioning = make_job(S.PROVISIONING, id="p")
    alive = make_job(S.RUNNING, id="r", nodes=2)
    gone = make_job(S.RUNNING, id="g")
    out = m.handle(Started((scheduled, provisioning, alive, gone), frozenset({"r"}),
                           gates=frozenset({"local"})), T0)
    assert sorted(transitions(out)) == [("g", S.QUEUED), ("p", S.QUEUED), ("s", S.QUEUED)]
    assert DeleteCluster("local", "p-0") in out and DeleteCluster("local", "g-0") in out
    assert m.live["r"].hellos == {0: "n0", 1: "n1"}  # adopted: heartbeats are checked again


def test_restart_with_an_open_checkpoint_completes_it() -> None:
    before = machine()
    job = running(before, nodes=2, checkpoint_version=1)
    before.handle(CheckpointAsked(job, "every 60s"), T0)
    saved = only(before.handle(CheckpointPart(job, 2, "ck1", 0, (("v2/shared/a", 3),)), T0),
                 SaveCheckpoint).checkpoint
    persisted = OpenCheckpoint.from_json(saved.to_json())  # what the store keeps
    after = machine()
    after.handle(Started((job,), frozenset({"a"}), open_checkpoints=(persisted,),
                         gates=frozenset({"local"})), T0 + 5)
    assert reply(after.handle(Heartbeat(job, 1), T0 + 6)).checkpoint.version == 2
    out = after.handle(CheckpointPart(job, 2, "ck1", 1, (("v2/nodes/1/b", 4),)), T0 + 7)
    record = only(out, WriteLatest).record
    assert record["version"] == 2 and record["bytes"] == 7


def test_restart_drops_the_open_checkpoint_of_a_job_that_is_gone() -> None:
    m = machine()
    ck = OpenCheckpoint("a", 2, "x", "r", T0, frozenset({0}))
    out = m.handle(Started((make_job(S.RUNNING),), frozenset(), open_checkpoints=(ck,),
                           gates=frozenset({"local"})), T0)
    assert SaveCheckpoint("a", None) in out
    assert transitions(out) == [("a", S.QUEUED)]


# -- warm reuse -----------------------------------------------------------------------


def warm_machine() -> JobMachine:
    m = machine()
    m.warm.idle_timeouts["local"] = 60.0
    return m


def test_a_finished_jobs_cluster_is_parked_and_its_nodes_get_one_credential_each() -> None:
    m = warm_machine()
    job = running(m, nodes=2)
    assert reply(m.handle(Heartbeat(job, 0), T0)).warm is True
    out = m.handle(AgentExited(job, 0, False, ""), T0)
    final = [i for i in out if isinstance(i, Transition)][-1]
    assert final.state == S.SUCCEEDED and "token_hash" not in final.fields  # kept for idling
    assert only(out, PutWarm).row.cluster_id == "a-0"
    assert not [i for i in out if isinstance(i, DeleteCluster)]
    done = job.model_copy(update={"state": S.SUCCEEDED})
    first = m.handle(Heartbeat(done, 0), T0 + 1)
    grant = reply(first).idle
    assert grant.cluster_id == "a-0" and reply(first).action == "idle"
    assert reply(m.handle(Heartbeat(done, 0), T0 + 2)) == HeartbeatAnswer(
        state=S.SUCCEEDED, action="idle")  # handed out once only
    last = m.handle(Heartbeat(done, 1), T0 + 2)
    assert Update("a", {"token_hash": None}) in last  # every node has its credential


def test_cancelled_or_timed_out_jobs_do_not_park() -> None:
    m = warm_machine()
    out = m.handle(AgentExited(running(m), 1, True, ""), T0)
    assert not [i for i in out if isinstance(i, PutWarm)]


def _parked(m: JobMachine) -> list[str]:
    job = running(m, nodes=2)
    m.handle(AgentExited(job, 0, False, ""), T0)
    done = job.model_copy(update={"state": S.SUCCEEDED})
    return [reply(m.handle(Heartbeat(done, r), T0)).idle.credential for r in (0, 1)]


def test_warm_cluster_goes_to_its_owner_only_and_credentials_reach_one_assignment() -> None:
    m = warm_machine()
    creds = _parked(m)
    with pytest.raises(PermissionDeniedError):
        m.handle(IdleNext("a-0", "guess", 0), T0)
    with pytest.raises(PermissionDeniedError):
        m.handle(IdleNext("a-0", creds[0], 1), T0)  # node 0's credential is not node 1's
    assert reply(m.handle(IdleNext("a-0", creds[0], 0), T0)) == {"action": "wait"}
    assert [r.id for r in m.warm.holding()] == ["warm:a-0"]

    mallory = make_job(id="m", owner="mallory", nodes=2)
    assert only(m.handle(Planned(((mallory, "local"),)), T0), Provision).warm_candidates == ()
    bob_shape = make_job(id="b", nodes=2)
    assert only(m.handle(Planned(((bob_shape, "local"),)), T0), Provision).warm_candidates \
        == ("a-0",)
    b = make_job(S.SCHEDULED, id="b", nodes=2, cluster_id=None)
    out = m.handle(ProvisionReady(b, "local", (("a-0", None),)), T0)
    t = only(out, Transition)
    assert (t.state, t.fields["cluster_id"]) == (S.PROVISIONING, "a-0")
    assert t.reason == "reusing warm cluster a-0 of job a on gate local"
    assert WakeIdle("a-0") in out and not [i for i in out if isinstance(i, CreateCluster)]
    answers = [reply(m.handle(IdleNext("a-0", creds[r], r), T0)) for r in (0, 1)]
    assert {x["job_id"] for x in answers} == {"b"}
    assert tokens.hash_token(answers[0]["token"]) == t.fields["token_hash"]
    with pytest.raises(PermissionDeniedError):  # no longer idle: the credentials are dead
        m.handle(IdleNext("a-0", creds[0], 0), T0)
    assert m.warm.holding() == []


def test_a_warm_cluster_that_is_not_usable_is_discarded_and_a_new_one_created() -> None:
    m = warm_machine()
    _parked(m)
    b = make_job(S.SCHEDULED, id="b", nodes=2, cluster_id=None)
    out = m.handle(ProvisionReady(b, "local", (("a-0", "node 1 died"),)), T0)
    assert DropWarm("a-0") in out and DeleteCluster("local", "a-0") in out
    assert only(out, CreateCluster).request.cluster_id == "b-0"


def test_idle_clusters_expire_after_the_gates_timeout() -> None:
    m = warm_machine()
    _parked(m)
    assert m.handle(Tick(()), T0 + 30) == []
    out = m.handle(Tick(()), T0 + 61)
    assert DropWarm("a-0") in out and DeleteCluster("local", "a-0") in out


def test_a_hand_over_in_flight_at_restart_is_dropped() -> None:
    m = warm_machine()
    row = WarmCluster(cluster_id="a-0", gate="local", owner="alice", from_job="a", flavor=None,
                      price_per_hour=None, nodes=1, cpus_per_node=2, gpus_per_node=0,
                      mem_mb=None, since=T0, idle_hashes=("h",), assigned_job="b")
    out = m.handle(Started((), frozenset(), warm=(row,), gates=frozenset({"local"})), T0)
    assert DropWarm("a-0") in out and DeleteCluster("local", "a-0") in out


def _row(cluster_id: str, owner: str = "alice", nodes: int = 2, since: float = T0
         ) -> WarmCluster:
    return WarmCluster(cluster_id=cluster_id, gate="local", owner=owner, from_job="x",
                       flavor=None, price_per_hour=None, nodes=nodes, cpus_per_node=2,
                       gpus_per_node=0, mem_mb=None, since=since, idle_hashes=(None,) * nodes)


def _evicted(out: list[Instruction]) -> list[str]:
    return [i.cluster_id for i in out if isinstance(i, DropWarm)]


def test_a_job_waiting_for_the_cores_of_someone_elses_parked_cluster_evicts_it() -> None:
    m = warm_machine()
    m.warm.put(_row("a-0"))
    bob = make_job(id="b", owner="bob", nodes=2)
    out = m.handle(Unplaced(((bob, ()),), {"local": 4}), T0)
    assert _evicted(out) == ["a-0"]
    assert DeleteCluster("local", "a-0") in out and Replan() in out
    assert m.warm.holding() == []
    assert not [i for i in out if isinstance(i, Provision)]  # the scheduler starts it


def test_a_waiting_job_of_the_same_owner_and_shape_goes_onto_the_parked_cluster() -> None:
    m = warm_machine()
    m.warm.put(_row("a-0"))
    first, second = make_job(id="b", nodes=2), make_job(id="c", nodes=2)
    out = m.handle(Unplaced(((first, ()), (second, ())), {"local": 4}), T0)
    assert transitions(out) == [("b", S.SCHEDULED)]
    assert only(out, Provision) == Provision("b", "local", ("a-0",))
    assert _evicted(out) == []  # the second job finds no room: it waits
    # while b's inputs are staged the cluster is b's alone: neither offered nor evicted
    bob = make_job(id="d", owner="bob", nodes=2)
    assert m.handle(Unplaced(((second, ()), (bob, ())), {"local": 4}), T0) == []
    assert only(m.handle(Planned(((second, "local"),)), T0), Provision).warm_candidates == ()


def test_a_job_too_wide_for_the_room_left_evicts_nothing() -> None:
    m = warm_machine()
    m.warm.put(_row("a-0"))
    bob = make_job(id="b", owner="bob", nodes=3)  # 6 cores; 4 are not held by jobs
    assert m.handle(Unplaced(((bob, ()),), {"local": 4}), T0) == []
    other = make_job(id="c", owner="bob", nodes=2, gate_choice="cloud")
    assert m.handle(Unplaced(((other, ("cloud",)),), {"local": 4}), T0) == []


def test_only_as_many_parked_clusters_as_the_job_needs_are_evicted_oldest_first() -> None:
    m = warm_machine()
    m.warm.put(_row("old", nodes=1, since=T0 - 50))
    m.warm.put(_row("new", nodes=1, since=T0 - 10))
    m.warm.put(_row("newest", nodes=1, since=T0))
    bob = make_job(id="b", owner="bob", nodes=2)  # 4 cores; 2 are free, 6 parked
    out = m.handle(Unplaced(((bob, ()),), {"local": 8}), T0)
    assert _evicted(out) == ["old"]
    assert sorted(m.warm.rows) == ["new", "newest"]


def test_a_wide_job_queued_first_keeps_the_parked_cores_from_later_small_jobs() -> None:
    m = warm_machine()
    m.warm.put(_row("a-0"))
    wide = make_job(id="w", owner="bob", nodes=2)
    mine = make_job(id="c", nodes=2)  # alice's: it could reuse a-0, but queued later
    out = m.handle(Unplaced(((wide, ()), (mine, ())), {"local": 4}), T0)
    assert _evicted(out) == ["a-0"] and transitions(out) == []


def test_a_parked_cluster_offered_to_a_job_that_was_cancelled_is_offered_again() -> None:
    m = warm_machine()
    m.warm.put(_row("a-0"))
    b, c = make_job(id="b", nodes=2), make_job(id="c", nodes=2)
    m.handle(Unplaced(((b, ()),), {"local": 4}), T0)
    gone = make_job(S.CANCELLED, id="b", nodes=2, cluster_id=None)
    assert m.handle(ProvisionReady(gone, "local", (("a-0", None),)), T0) == []
    assert only(m.handle(Unplaced(((c, ()),), {"local": 4}), T0), Provision).warm_candidates \
        == ("a-0",)


# -- holds and jobs that can never run ------------------------------------------------


def test_hold_and_release_only_a_queued_job() -> None:
    m = machine()
    out = m.handle(HoldAsked(make_job(), "alice", True), T0)
    assert out == [Update("a", {"held": True}), Replan()]
    assert m.handle(HoldAsked(make_job(held=True), "alice", True), T0) == []  # already held
    assert m.handle(HoldAsked(make_job(held=True), "alice", False), T0) == [
        Update("a", {"held": False}), Replan()]
    with pytest.raises(ConflictError, match="only a QUEUED job can be held"):
        m.handle(HoldAsked(make_job(S.RUNNING), "alice", True), T0)


def test_a_job_that_can_never_run_is_cancelled_with_the_reason() -> None:
    out = machine().handle(Impossible(make_job(), "procs=9 exceeds 8"), T0)
    assert out == [Transition("a", S.CANCELLED, "can never run: procs=9 exceeds 8",
                              {"token_hash": None})]
    assert machine().handle(Impossible(make_job(S.RUNNING), "x"), T0) == []


def test_a_queued_job_its_budget_can_never_hold_is_cancelled_a_running_one_runs_on() -> None:
    why = "its worst case 6.00 is more than alice's whole budget of 5.00 per month"
    out = machine().handle(OverBudget(make_job(), why), T0)
    assert out == [Transition("a", S.CANCELLED, f"over budget: {why}", {"token_hash": None})]
    for state in (S.RUNNING, S.SCHEDULED, S.CANCELLED):  # its cost was committed at its start
        assert machine().handle(OverBudget(make_job(state), why), T0) == []


def test_a_job_whose_gate_was_removed_is_ended_at_restart() -> None:
    m = machine()
    job = make_job(gate_choice="gone")
    out = m.handle(Started((job,), frozenset(), gates=frozenset({"local"})), T0)
    assert Transition("a", S.CANCELLED, "can never run: gate gone is no longer configured",
                      {"token_hash": None}) in out


# -- dependencies: a condition that can never hold cancels the dependant ------------------


def up(job_id: str, state: JobState, started: bool = False) -> Upstream:
    return Upstream(job_id, state, started or state in (S.RUNNING, S.STAGING_OUT))


@pytest.mark.parametrize(("dependency", "ended", "why"), [
    ("afterok:u", S.FAILED, "dependency u ended FAILED"),
    ("afterok:u", S.CANCELLED, "dependency u ended CANCELLED"),
    ("afterok:u", S.TIMEOUT, "dependency u ended TIMEOUT"),
    ("afternotok:u", S.SUCCEEDED, "dependency u ended SUCCEEDED"),
])
def test_a_dependency_that_can_never_hold_cancels_the_queued_dependant(
        dependency: str, ended: JobState, why: str) -> None:
    job = make_job(id="d", dependency=dependency)
    out = machine().handle(UpstreamChanged((job,), {"u": up("u", ended)}), T0)
    assert out == [Transition("d", S.CANCELLED, why, {"token_hash": None})]


@pytest.mark.parametrize(("dependency", "state"), [
    ("afterok:u", S.SUCCEEDED), ("afterok:u", S.RUNNING), ("afternotok:u", S.FAILED),
    ("afternotok:u", S.QUEUED), ("afterany:u", S.FAILED), ("afterany:u", S.CANCELLED),
    ("after:u", S.CANCELLED), ("after:u", S.QUEUED), ("singleton", S.QUEUED),
])
def test_a_dependency_that_holds_or_still_may_changes_nothing(dependency: str,
                                                              state: JobState) -> None:
    job = make_job(id="d", dependency=dependency)
    assert machine().handle(UpstreamChanged((job,), {"u": up("u", state)}), T0) == []


def test_every_condition_must_hold_and_the_first_that_never_can_is_named() -> None:
    job = make_job(id="d", dependency="afterany:x,afterok:u:v")
    facts = {"x": up("x", S.RUNNING), "u": up("u", S.SUCCEEDED), "v": up("v", S.TIMEOUT)}
    out = machine().handle(UpstreamChanged((job,), facts), T0)
    assert transitions(out) == [("d", S.CANCELLED)]
    assert only(out, Transition).reason == "dependency v ended TIMEOUT"


def test_a_dependency_on_a_job_that_no_longer_exists_is_never_met() -> None:
    job = make_job(id="d", dependency="afterany:gone")
    out = machine().handle(UpstreamChanged((job,), {}), T0)
    assert only(out, Transition).reason == "dependency gone no longer exists"


def test_only_a_queued_dependant_is_cancelled() -> None:
    # a job that already started (its dependency held then) or ended is not touched again
    jobs = tuple(make_job(state, id=f"d{n}", dependency="afterok:u")
                 for n, state in enumerate((S.SCHEDULED, S.RUNNING, S.CANCELLED)))
    assert machine().handle(UpstreamChanged(jobs, {"u": up("u", S.FAILED)}), T0) == []


def test_several_dependants_are_decided_together() -> None:
    ok, notok = make_job(id="d1", dependency="afterok:u"), make_job(id="d2",
                                                                    dependency="afternotok:u")
    out = machine().handle(UpstreamChanged((ok, notok), {"u": up("u", S.FAILED)}), T0)
    assert transitions(out) == [("d1", S.CANCELLED)]


# -- dependencies on a job array: every task, with Slurm's semantics ----------------------


def arr(**counts: int) -> Upstream:
    """Array "A" with ``counts`` tasks per state; its first unsuccessful task is A_1."""
    bad = next((s for s in ("FAILED", "TIMEOUT", "CANCELLED") if counts.get(s)), None)
    started = any(counts.get(s) for s in ("RUNNING", "SUCCEEDED", "FAILED", "TIMEOUT"))
    return array_upstream("A", counts, started, None if bad is None else ("A_1", bad))


@pytest.mark.parametrize(("dependency", "tasks", "why"), [
    # afterok: never, as soon as one task did not succeed, while others still run
    ("afterok:A", {"FAILED": 1, "RUNNING": 8, "SUCCEEDED": 1},
     "dependency A ended FAILED (task A_1)"),
    ("afterok:A", {"CANCELLED": 1, "QUEUED": 9}, "dependency A ended CANCELLED (task A_1)"),
    ("afterok:A", {"TIMEOUT": 1, "SUCCEEDED": 9}, "dependency A ended TIMEOUT (task A_1)"),
    ("afternotok:A", {"SUCCEEDED": 10}, "dependency A ended SUCCEEDED"),
])
def test_an_array_dependency_that_can_never_hold_cancels(dependency: str,
                                                         tasks: dict[str, int],
                                                         why: str) -> None:
    job = make_job(id="d", dependency=dependency)
    out = machine().handle(UpstreamChanged((job,), {"A": arr(**tasks)}), T0)
    assert out == [Transition("d", S.CANCELLED, why, {"token_hash": None})]


@pytest.mark.parametrize(("dependency", "tasks"), [
    ("afterok:A", {"SUCCEEDED": 9, "RUNNING": 1}), ("afterok:A", {"SUCCEEDED": 10}),
    ("afternotok:A", {"SUCCEEDED": 9, "RUNNING": 1}),  # the last one may still fail
    ("afternotok:A", {"FAILED": 1, "RUNNING": 9}), ("afterany:A", {"FAILED": 1, "QUEUED": 9}),
    ("after:A", {"QUEUED": 10}),
])
def test_an_array_dependency_that_holds_or_still_may_changes_nothing(
        dependency: str, tasks: dict[str, int]) -> None:
    job = make_job(id="d", dependency=dependency)
    assert machine().handle(UpstreamChanged((job,), {"A": arr(**tasks)}), T0) == []


def test_an_array_as_one_upstream_holds_as_slurm_says() -> None:
    from skyport.core.dependencies import _holds

    running = arr(SUCCEEDED=3, RUNNING=1)
    assert not _holds("afterok", running) and not _holds("afterany", running)
    assert _holds("after", running) and not _holds("after", arr(QUEUED=4))
    assert _holds("afterok", arr(SUCCEEDED=4)) and not _holds("afternotok", arr(SUCCEEDED=4))
    assert _holds("afterany", arr(SUCCEEDED=3, CANCELLED=1))
    assert _holds("afternotok", arr(SUCCEEDED=3, FAILED=1))
    assert not _holds("afternotok", arr(RUNNING=3, FAILED=1))  # not over: all must end


def test_every_task_of_a_dependent_array_is_cancelled_together() -> None:
    tasks = tuple(make_job(id=f"B_{i}", dependency="afterok:A") for i in range(3))
    out = machine().handle(UpstreamChanged(tasks, {"A": arr(FAILED=1, RUNNING=2)}), T0)
    assert transitions(out) == [(f"B_{i}", S.CANCELLED) for i in range(3)]
