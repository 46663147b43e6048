"""Hand-made cases: overruns, pools, unplaceable jobs, the registry."""

from __future__ import annotations

import pytest

from skyport.timetable import (
    AvailabilityProfile,
    InvalidSnapshotError,
    Pool,
    QueuedJob,
    RunningJob,
    Snapshot,
    UnknownPolicyError,
    UsageLedger,
    load_policy,
    plan,
)

POOL = (Pool("p", 10),)


def job(i: int, procs: int, est: float, submit: float = 0.0, owner: str = "u") -> QueuedJob:
    return QueuedJob(i, owner, submit, procs, est)


def test_easy_backfills_a_short_job_but_not_a_long_wide_one() -> None:
    running = (RunningJob("r", "u", "p", 6, 0.0, 100.0),)
    queue = (job(1, 8, 50), job(2, 4, 90, 1), job(3, 4, 500, 2), job(4, 2, 500, 3))
    timetable = plan(Snapshot(10.0, queue, running, POOL), load_policy("easy"))
    assert [p.job_id for p in timetable.to_start_now] == [2]
    assert timetable.start_of(1) == 100.0
    # Job 3 is neither short enough nor small enough; job 4 fits in the spare 2.
    timetable = plan(
        Snapshot(10.0, (queue[0], queue[2], queue[3]), running, POOL), load_policy("easy")
    )
    assert [p.job_id for p in timetable.to_start_now] == [4]


def test_a_job_running_over_counts_as_ending_now_but_holds_its_processors() -> None:
    running = (RunningJob("r", "u", "p", 8, 0.0, 5.0),)  # estimate ran out at 5
    queue = (job(1, 4, 10),)
    for name in ("fcfs", "easy", "conservative"):
        timetable = plan(Snapshot(50.0, queue, running, POOL), load_policy(name))
        assert timetable.to_start_now == ()
        assert timetable.start_of(1) == 50.0


def test_sjf_and_easy_sjf_orders() -> None:
    running = (RunningJob("r", "u", "p", 9, 0.0, 100.0),)
    queue = (job(1, 10, 50), job(2, 1, 90, 1), job(3, 1, 20, 2))
    assert [
        p.job_id
        for p in plan(Snapshot(0.0, queue, running, POOL), load_policy("easy-sjf")).to_start_now
    ] == [3]
    assert [
        p.job_id
        for p in plan(Snapshot(0.0, queue, running, POOL), load_policy("easy")).to_start_now
    ] == [2]
    assert [
        p.job_id for p in plan(Snapshot(0.0, queue, (), POOL), load_policy("sjf")).to_start_now
    ] == [3]


def test_fairshare_prefers_the_owner_with_less_usage() -> None:
    queue = (job(1, 10, 50, 0, "heavy"), job(2, 10, 50, 5, "light"))
    snapshot = Snapshot(10.0, queue, (), POOL, {"heavy": 1e6, "light": 10.0})
    assert [p.job_id for p in plan(snapshot, load_policy("fairshare")).to_start_now] == [2]


def test_slowdown_prefers_short_jobs_until_a_job_ages() -> None:
    queue = (job(1, 10, 5000, 0), job(2, 10, 10, 100))
    snapshot = Snapshot(150.0, queue, (), POOL)
    young = load_policy("easy-slowdown", max_wait_s=1000.0)
    assert [p.job_id for p in plan(snapshot, young).to_start_now] == [2]
    aged = load_policy("easy-slowdown", max_wait_s=100.0)
    assert [p.job_id for p in plan(snapshot, aged).to_start_now] == [1]


def test_pools_price_boot_and_unplaceable() -> None:
    pools = (Pool("dear", 8, price_per_hour=2.0), Pool("cheap", 8, price_per_hour=1.0, boot_s=60))
    queue = (
        QueuedJob(1, "u", 0, 4, 100),
        QueuedJob(2, "u", 0, 20, 100),
        QueuedJob(3, "u", 0, 4, 100, allowed_pools=("nowhere",)),
        QueuedJob(4, "u", 0, 8, 100, allowed_pools=("dear",)),
    )
    timetable = plan(Snapshot(0.0, queue, (), pools), load_policy("conservative"))
    assert timetable.by_job[1].pool == "cheap"
    assert timetable.by_job[4].pool == "dear"
    reasons = {u.job_id: u.reason for u in timetable.unplaceable}
    assert set(reasons) == {2, 3}
    assert "procs=20" in reasons[2] and "8" in reasons[2]
    assert "nowhere" in reasons[3]


def test_bad_snapshots_are_refused() -> None:
    with pytest.raises(InvalidSnapshotError, match="'gone'"):
        plan(Snapshot(0.0, (), (RunningJob("r", "u", "gone", 1, 0, 1),), POOL), load_policy("easy"))
    with pytest.raises(InvalidSnapshotError, match="no pools"):
        plan(Snapshot(0.0, (), (), ()), load_policy("easy"))


def test_registry_names_known_policies_on_a_miss() -> None:
    with pytest.raises(UnknownPolicyError, match="known policies: .*easy"):
        load_policy("nope")
    assert load_policy("easy-sjf").name == "easy-sjf"


def test_profile_first_fit_and_reserve() -> None:
    profile = AvailabilityProfile(0.0, 10, 2, [(10.0, 4), (20.0, 4)])
    slot = profile.earliest(6, 5.0)
    assert profile.start_of(slot) == 10.0
    profile.reserve(slot, 5.0, 6)
    assert profile.steps() == [(0.0, 2), (10.0, 0), (15.0, 6), (20.0, 10)]
    assert profile.start_of(profile.earliest(1, 100.0)) == 15.0


def test_usage_ledger_halves() -> None:
    ledger = UsageLedger(half_life_s=100.0)
    ledger.charge("a", 80.0, at_s=0.0)
    assert ledger.value("a", 100.0) == pytest.approx(40.0)
    assert ledger.at(200.0) == {"a": pytest.approx(20.0)}
