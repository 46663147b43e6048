"""Why each queued job waits, on engine snapshots: one test per reason."""

from __future__ import annotations

from skyport.timetable import Pool, QueuedJob, RunningJob, Snapshot, load_policy, plan
from skyport.timetable.reasons import IMPOSSIBLE, PRIORITY, RESOURCES, UNPLANNED, wait_reasons

NOW = 1_000.0


def _explain(queued: list[QueuedJob], running: list[RunningJob], policy: str = "fcfs"):  # type: ignore[no-untyped-def]
    snap = Snapshot(NOW, tuple(queued), tuple(running), (Pool("p", 8),))
    table = plan(snap, load_policy(policy))
    return table, wait_reasons(snap, table)


def q(job_id: str, procs: int, submit: float = 0.0, est: float = 100.0) -> QueuedJob:
    return QueuedJob(job_id, "alice", submit, procs, est)


def test_a_job_that_starts_now_has_no_reason() -> None:
    _, reasons = _explain([q("a", 4)], [])
    assert reasons == {}


def test_resources_when_its_cores_are_not_free_with_its_planned_start() -> None:
    running = [RunningJob("r", "bob", "p", 6, NOW - 10, 100.0)]  # ends at NOW + 90
    _, reasons = _explain([q("a", 8)], running)
    assert reasons["a"].code == RESOURCES
    assert reasons["a"].detail == "needs 8 cores, 2 free now; planned start in 90s on p"


def test_priority_when_the_cores_are_free_but_held_for_a_job_ahead() -> None:
    running = [RunningJob("r", "bob", "p", 6, NOW - 10, 100.0)]
    # fcfs: the 1-core job may not pass the 8-core job ahead of it, though 2 cores are free
    _, reasons = _explain([q("a", 8, submit=1), q("b", 1, submit=2)], running)
    assert reasons["a"].code == RESOURCES
    assert reasons["b"].code == PRIORITY
    assert reasons["b"].detail.startswith("1 cores are free, but held for jobs ahead of it")


def test_backfilling_starts_what_priority_would_have_held() -> None:
    running = [RunningJob("r", "bob", "p", 6, NOW - 10, 100.0)]
    table, reasons = _explain([q("a", 8, submit=1), q("b", 1, submit=2, est=50)], running,
                              policy="easy")
    assert [p.job_id for p in table.to_start_now] == ["b"] and "b" not in reasons


def test_impossible_when_no_pool_could_ever_hold_it() -> None:
    _, reasons = _explain([q("a", 9)], [])
    assert reasons["a"].code == IMPOSSIBLE and "exceeds" in reasons["a"].detail


def test_unplanned_when_the_caller_kept_no_start_for_it() -> None:
    running = (RunningJob("r", "bob", "p", 6, NOW - 10, 100.0),)
    snap = Snapshot(NOW, (q("a", 8, submit=1), q("b", 1, submit=2)), running, (Pool("p", 8),))
    table = plan(snap, load_policy("fcfs"))
    kept = [p for p in table.entries if p.job_id == "a"]  # as past the projection limit
    reasons = wait_reasons(snap, table, kept)
    assert reasons["a"].code == RESOURCES and "planned start in 90s" in reasons["a"].detail
    assert reasons["b"].code == UNPLANNED
