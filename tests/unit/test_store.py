"""The SQLite job store: jobs, transitions with their events, and what survives a reopen."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from skyport.errors import ConflictError, NotFoundError
from skyport.models import JobSpec, JobState
from skyport.store import JobStore

S = JobState
TO_RUNNING = [S.SCHEDULED, S.PROVISIONING, S.STAGING_IN, S.RUNNING]


def spec(name: str = "job") -> JobSpec:
    return JobSpec(name=name, script="#!/bin/bash\necho hi\n")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[JobStore]:
    s = JobStore(db_path)
    yield s
    s.close()


def run(store: JobStore, job_id: str) -> None:
    for state in TO_RUNNING:
        store.transition(job_id, state, f"to {state.value}")


def test_add(store: JobStore) -> None:
    before = datetime.now(UTC)
    job = store.add("j1", "alice", spec("sim"))
    assert (job.id, job.owner, job.name, job.state) == ("j1", "alice", "sim", S.QUEUED)
    assert before <= job.submitted_at <= datetime.now(UTC)
    assert job.submitted_at.tzinfo is not None
    assert [(e.state, e.reason) for e in job.events] == [(S.QUEUED, "submitted")]
    assert job.started_at is None and job.ended_at is None
    assert store.get("j1") == job


def test_duplicate_id_is_a_conflict(store: JobStore) -> None:
    first = store.add("j1", "alice", spec("one"))
    with pytest.raises(ConflictError, match="job j1 already exists"):
        store.add("j1", "bob", spec("two"))
    assert store.get("j1") == first
    assert len(store.list()) == 1


def test_unknown_job(store: JobStore) -> None:
    with pytest.raises(NotFoundError, match="no job nope"):
        store.get("nope")
    with pytest.raises(NotFoundError, match="no job nope"):
        store.transition("nope", S.SCHEDULED, "x")


def test_events_in_order_with_times_and_reasons(store: JobStore) -> None:
    store.add("j1", "alice", spec())
    run(store, "j1")
    store.transition("j1", S.STAGING_OUT, "exit 0")
    job = store.transition("j1", S.SUCCEEDED, "outputs stored", exit_code=0)
    assert [(e.state, e.reason) for e in job.events] == [
        (S.QUEUED, "submitted"),
        (S.SCHEDULED, "to SCHEDULED"),
        (S.PROVISIONING, "to PROVISIONING"),
        (S.STAGING_IN, "to STAGING_IN"),
        (S.RUNNING, "to RUNNING"),
        (S.STAGING_OUT, "exit 0"),
        (S.SUCCEEDED, "outputs stored"),
    ]
    times = [e.time for e in job.events]
    assert times == sorted(times)
    assert times[0] == job.submitted_at
    assert (job.state, job.reason, job.exit_code) == (S.SUCCEEDED, "outputs stored", 0)


def test_started_at_on_running_and_ended_at_on_terminal(store: JobStore) -> None:
    store.add("j1", "alice", spec())
    for state in TO_RUNNING[:-1]:
        assert store.transition("j1", state, "x").started_at is None
    running = store.transition("j1", S.RUNNING, "started")
    assert running.started_at == running.events[-1].time
    assert running.ended_at is None
    done = store.transition("j1", S.TIMEOUT, "time limit")
    assert done.started_at == running.started_at
    assert done.ended_at == done.events[-1].time
    assert done.ended_at >= done.started_at


def test_explicit_times_are_kept(store: JobStore) -> None:
    store.add("j1", "alice", spec())
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    job = store.transition("j1", S.FAILED, "lost", ended_at=at)
    assert job.ended_at == at


@pytest.mark.parametrize("terminal", [S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMEOUT])
def test_terminal_state_is_final(store: JobStore, terminal: S) -> None:
    store.add("j1", "alice", spec())
    run(store, "j1")
    if terminal == S.SUCCEEDED:
        store.transition("j1", S.STAGING_OUT, "x")
    final = store.transition("j1", terminal, "the end")
    for new in S:
        with pytest.raises(ConflictError, match=f"j1 is {terminal.value}"):
            store.transition("j1", new, "again")
    assert store.get("j1") == final  # nothing written, not even an event


def test_illegal_transition_changes_nothing(store: JobStore) -> None:
    job = store.add("j1", "alice", spec())
    with pytest.raises(ConflictError, match="QUEUED: it cannot become RUNNING"):
        store.transition("j1", S.RUNNING, "skip ahead")
    assert store.get("j1") == job


def test_requeue_counts_restarts(store: JobStore) -> None:
    store.add("j1", "alice", spec())
    run(store, "j1")
    job = store.transition("j1", S.QUEUED, "node lost", restarts=1, cluster_id=None)
    assert (job.state, job.restarts, job.reason) == (S.QUEUED, 1, "node lost")


def test_update_without_an_event(store: JobStore) -> None:
    store.add("j1", "alice", spec())
    plan = datetime.now(UTC) + timedelta(hours=1)
    store.update(
        "j1", gate="local", cluster_id="c1", node_names=["n0", "n1"], planned_start_at=plan
    )
    job = store.get("j1")
    assert (job.gate, job.cluster_id, job.node_names) == ("local", "c1", ["n0", "n1"])
    assert job.planned_start_at == plan
    assert len(job.events) == 1
    with pytest.raises(KeyError):
        store.update("j1", state="RUNNING", owner="mallory")


def test_list_filters(store: JobStore) -> None:
    for i, owner in enumerate(["alice", "bob", "alice", "carol"]):
        store.add(f"j{i}", owner, spec(f"n{i}"))
    store.transition("j1", S.SCHEDULED, "x")
    store.transition("j2", S.CANCELLED, "user")
    assert [j.id for j in store.list()] == ["j0", "j1", "j2", "j3"]  # submission order
    assert [j.id for j in store.list(owner="alice")] == ["j0", "j2"]
    assert [j.id for j in store.list(states=[S.QUEUED])] == ["j0", "j3"]
    assert [j.id for j in store.list(states=[S.SCHEDULED, S.CANCELLED])] == ["j1", "j2"]
    assert [j.id for j in store.list(owner="alice", states=[S.QUEUED])] == ["j0"]
    assert store.list(states=[]) == []
    assert store.list(owner="nobody") == []
    assert [j.id for j in store.list(limit=2)] == ["j0", "j1"]
    assert all(j.events == [] for j in store.list())


def test_reopen_after_close_keeps_everything(db_path: Path) -> None:
    first = JobStore(db_path)
    first.add("j1", "alice", spec("one"))
    run(first, "j1")
    first.add("j2", "bob", spec("two"))
    first.update("j1", node_names=["n0"])
    before = [first.get("j1"), first.get("j2")]
    first.close()

    again = JobStore(db_path)
    try:
        assert [again.get("j1"), again.get("j2")] == before
        assert again.get("j1").started_at is not None
        job = again.transition("j1", S.FAILED, "after restart")
        assert len(job.events) == len(before[0].events) + 1
        again.add("j3", "carol", spec())
        assert [j.id for j in again.list()] == ["j1", "j2", "j3"]
    finally:
        again.close()


def test_second_store_on_the_same_file_sees_writes(db_path: Path) -> None:
    a, b = JobStore(db_path), JobStore(db_path)
    try:
        a.add("j1", "alice", spec())
        assert b.get("j1").state == S.QUEUED
        b.transition("j1", S.SCHEDULED, "by b")
        assert a.get("j1").state == S.SCHEDULED
        with pytest.raises(ConflictError):
            a.transition("j1", S.RUNNING, "stale view")  # a re-reads the state: no lost update
        assert (db_path.parent / (db_path.name + "-wal")).exists()
    finally:
        a.close()
        b.close()


def _churn(store: JobStore, job_id: str, rounds: int, errors: list[BaseException]) -> None:
    try:
        for _ in range(rounds):
            store.transition(job_id, S.SCHEDULED, "plan")
            store.transition(job_id, S.QUEUED, "unplan")
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "two-stores"])
def test_concurrent_writers_do_not_corrupt(db_path: Path, shared: bool) -> None:
    stores = [JobStore(db_path)] if shared else [JobStore(db_path), JobStore(db_path)]
    try:
        stores[0].add("a", "alice", spec())
        stores[0].add("b", "bob", spec())
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_churn, args=(stores[i % len(stores)], job, 100, errors))
            for i, job in enumerate(["a", "b"])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        for job_id in ("a", "b"):
            job = stores[-1].get(job_id)
            assert job.state == S.QUEUED
            assert len(job.events) == 1 + 200
            assert [e.state for e in job.events[1:3]] == [S.SCHEDULED, S.QUEUED]
    finally:
        for s in stores:
            s.close()


def test_apply_writes_all_changes_in_one_transaction_or_none(store: JobStore) -> None:
    store.add("a", "alice", spec())
    store.add("b", "alice", spec())
    changed = store.apply([
        ("transition", "a", S.SCHEDULED, "planned", {"gate": "local"}),
        ("update", "b", {"restarts": 2}),
        ("open_checkpoint", "a", {"version": 1}),
    ])
    assert changed == ["a"]
    assert store.get("a").gate == "local" and store.get("b").restarts == 2
    assert store.open_checkpoints() == {"a": {"version": 1}}
    with pytest.raises(ConflictError):  # SCHEDULED -> RUNNING is not allowed: nothing is kept
        store.apply([("update", "b", {"restarts": 5}),
                     ("open_checkpoint", "a", None),
                     ("transition", "a", S.RUNNING, "no", {})])
    assert store.get("b").restarts == 2 and store.open_checkpoints() == {"a": {"version": 1}}
    store.apply([("open_checkpoint", "a", None)])
    assert store.open_checkpoints() == {}


def test_restart_bookkeeping_survives_a_reopen(db_path: Path) -> None:
    s = JobStore(db_path)
    s.add("j", "alice", spec())
    run(s, "j")
    s.transition("j", S.QUEUED, "lost", lost_attempts=["node lost: n1"], checkpoint_version=3,
                 restarts=1)
    s.close()
    job = JobStore(db_path).get("j")
    assert (job.lost_attempts, job.checkpoint_version, job.restarts) == (["node lost: n1"], 3, 1)


def test_a_store_written_before_restart_bookkeeping_gains_its_columns(db_path: Path) -> None:
    import sqlite3

    s = JobStore(db_path)
    s.add("j", "alice", spec())
    s.close()
    db = sqlite3.connect(db_path)  # as an older Sky Port left it: without the new columns
    db.executescript("ALTER TABLE jobs DROP COLUMN lost_attempts;"
                     "ALTER TABLE jobs DROP COLUMN checkpoint_version;")
    db.close()
    job = JobStore(db_path).get("j")
    assert (job.lost_attempts, job.checkpoint_version) == ([], 0)


def test_counts_by_state_match_the_jobs_listed(store: JobStore) -> None:
    spec = JobSpec(script="#!/bin/bash\ntrue\n")
    for i in range(5):
        store.add(f"a{i}", "alice", spec)
    store.add("b0", "bob", spec)
    store.transition("a0", JobState.CANCELLED, "by hand")
    store.transition("a1", JobState.SCHEDULED, "planned")
    assert store.counts_by_state("alice") == {
        JobState.QUEUED: 3, JobState.CANCELLED: 1, JobState.SCHEDULED: 1}
    assert store.counts_by_state("bob") == {JobState.QUEUED: 1}
    assert store.counts_by_state("nobody") == {}
    everyone = store.counts_by_state()
    assert everyone == {s: sum(1 for j in store.list() if j.state is s) for s in everyone}
    assert sum(everyone.values()) == 6


def test_identical_specs_are_parsed_once_and_shared(store: JobStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import skyport.store as store_module

    monkeypatch.setattr(store_module, "SPEC_MEMORY_ENTRIES", 2)
    same = JobSpec(name="same", script="#!/bin/bash\ntrue\n")
    big = JobSpec(name="big", script="#!/bin/bash\n" + "# x\n" * 5000)
    for i in range(3):
        store.add(f"s{i}", "alice", same)
    store.add("big0", "alice", big)
    store.add("big1", "alice", big)
    jobs = {j.id: j for j in store.list()}
    assert jobs["s0"].spec == same and jobs["s0"].spec is jobs["s2"].spec
    assert jobs["big0"].spec == big and jobs["big0"].spec is not jobs["big1"].spec
    with pytest.raises(ValidationError):  # shared, hence frozen
        jobs["s0"].spec.name = "changed"  # type: ignore[misc]
    for i in range(5):  # many distinct specs: the memory stays bounded
        store.add(f"d{i}", "alice", JobSpec(name=f"d{i}", script="#!/bin/bash\ntrue\n"))
    assert [store.get(f"d{i}").spec.name for i in range(5)] == [f"d{i}" for i in range(5)]
    assert len(store._specs) <= 2


def test_a_commit_is_on_disk_when_it_returns(store: JobStore) -> None:
    # a job is acknowledged after its commit: WAL with synchronous=NORMAL would let a
    # power cut take back commits already acknowledged; FULL (2) syncs each one
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_open_uploads_survive_a_reopen(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.add_upload("u1", "job-a", "bucket/sp/jobs/job-a/outputs/x", "hash-1")
    store.add_upload("u2", "job-b", "bucket/sp/jobs/job-b/outputs/y", "hash-2")
    store.close()
    store = JobStore(tmp_path / "jobs.db")
    assert store.open_uploads("job-a") == [("u1", "job-a", "bucket/sp/jobs/job-a/outputs/x",
                                            "hash-1")]
    store.drop_upload("u1")
    assert [u[0] for u in store.open_uploads()] == ["u2"]
    store.close()
