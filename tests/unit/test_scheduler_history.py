"""The Scheduler's runtime history: fed by the Core's charges, durable, shown as predicted."""

from __future__ import annotations

from pathlib import Path

from skyport.scheduler import HISTORY_FILE, SchedulerService, UsageCharge
from skyport.timetable import Pool, QueuedJob, RunningJob, Snapshot
from skyport.timetable.snapshot import Ended

POOLS = (Pool("p", 10),)


def _snapshot() -> Snapshot:
    # 6 of 10 processors busy until t=1000; the head needs all 10, alice's job 4 for 5000 s
    running = (RunningJob("r", "x", "p", 6, 0.0, 1000.0),)
    queue = (QueuedJob("head", "x", 0.0, 10, 100.0), QueuedJob("a", "alice", 1.0, 4, 5000.0))
    return Snapshot(10.0, queue, running, POOLS)


def test_charges_feed_the_history_and_a_new_service_over_the_state_dir_has_it(
    tmp_path: Path,
) -> None:
    service = SchedulerService("sky", state_dir=tmp_path)
    plan = {e.job_id: e for e in service.plan(_snapshot()).entries}
    assert not plan["a"].start_now  # no history: planned at 5000 s, it would delay the head
    charges = [
        UsageCharge("alice", 400.0, 5.0, runtime_s=100.0, requested_s=5000.0),
        UsageCharge("alice", 1200.0, 6.0, runtime_s=300.0, requested_s=5000.0),
        UsageCharge("bob", 50.0, 7.0),  # no runtime: fair share only
    ]
    plan = {e.job_id: e for e in service.plan(_snapshot(), charges).entries}
    assert plan["a"].start_now  # predicted 200 s: backfills before the head's reservation
    assert plan["head"].predicted and not plan["a"].predicted
    assert (tmp_path / HISTORY_FILE).exists()

    restarted = SchedulerService("sky", state_dir=tmp_path)
    assert restarted.history.view() == {
        "alice": (Ended(100.0, 5000.0), Ended(300.0, 5000.0))
    }
    assert {e.job_id: e for e in restarted.plan(_snapshot()).entries}["a"].start_now


def test_a_damaged_history_file_starts_empty(tmp_path: Path) -> None:
    (tmp_path / HISTORY_FILE).write_text("{not json")
    assert SchedulerService("sky", state_dir=tmp_path).history.view() == {}


def test_policies_without_predictions_mark_nothing_predicted() -> None:
    entries = SchedulerService("easy").plan(_snapshot()).entries
    assert entries and not any(e.predicted for e in entries)
