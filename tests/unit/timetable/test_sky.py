"""The house policy ``sky``: predictions in planning, the aging guard's bound."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from benchmarks.timetable.replay import replay
from benchmarks.timetable.swf import TraceJob
from policies.sky import SkyPolicy
from skyport.timetable import Capability, Pool, QueuedJob, RunningJob, Snapshot, load_policy, plan
from skyport.timetable.snapshot import Ended
from tests.unit.timetable.conftest import CAPACITY, snapshots
from tests.unit.timetable.test_engine_properties import _as_running, _peak_use

POOL = (Pool("p", 10),)


def test_sky_is_registered_and_predicts() -> None:
    policy = load_policy("sky")
    assert policy.name == "sky"
    assert {Capability.NEEDS_HISTORY, Capability.PREDICTS} <= policy.capabilities


def test_a_job_whose_owner_runs_short_backfills_on_its_prediction() -> None:
    # 10 processors, 6 busy until t=1000 (requested), head needs 10: shadow 1000.
    running = (RunningJob("r", "x", "p", 6, 0.0, 1000.0),)
    head = QueuedJob("head", "x", 0.0, 10, 100.0)
    # asks for 5000 s, but its owner's last two jobs ran 100 s and 300 s
    short = QueuedJob("short", "alice", 1.0, 4, 5000.0)
    history = {"alice": (Ended(100.0, 5000.0), Ended(300.0, 5000.0))}
    snapshot = Snapshot(10.0, (head, short), running, POOL, history=history)
    assert [p.job_id for p in plan(snapshot, load_policy("sky")).to_start_now] == ["short"]
    # without history it is planned at its requested time and may not delay the head
    blind = Snapshot(10.0, (head, short), running, POOL)
    assert plan(blind, load_policy("sky")).to_start_now == ()
    assert plan(snapshot, load_policy("sky", predict=False)).to_start_now == ()


def test_the_planning_view_predicts_and_corrects_running_jobs() -> None:
    history = {"alice": (Ended(100.0, 5000.0), Ended(300.0, 5000.0))}
    running = (
        RunningJob("young", "alice", "p", 1, 900.0, 5000.0),  # 100 s in: predicted 200 s
        RunningJob("over", "alice", "p", 1, 0.0, 5000.0),  # 1000 s in: past 200 s, next step
        RunningJob("stranger", "bob", "p", 1, 0.0, 5000.0),  # no history: requested
    )
    snapshot = Snapshot(1000.0, (), running, POOL, history=history)
    view = load_policy("sky", plan_with="predicted").planning_view(snapshot)
    assert [job.est_runtime_s for job in view.running] == [200.0, 1800.0, 5000.0]
    # by default running jobs keep their requested ends
    assert load_policy("sky").planning_view(snapshot).running == running


def test_an_aged_job_switches_planning_back_to_requested_times() -> None:
    history = {"alice": (Ended(100.0, 5000.0),)}
    queue = (QueuedJob("old", "bob", 0.0, 10, 100.0), QueuedJob("a", "alice", 900.0, 1, 5000.0))
    snapshot = Snapshot(1000.0, queue, (), POOL, history=history)
    view = load_policy("sky", max_wait_s=2000.0).planning_view(snapshot)
    assert view.queued[1].est_runtime_s == 100.0
    assert load_policy("sky", max_wait_s=500.0).planning_view(snapshot) is snapshot


def _workload(seed: int, n: int = 300) -> list[TraceJob]:
    """Random jobs on 16 processors, overloaded; runtimes never past the request (kill)."""
    rng = random.Random(seed)
    t = 0.0
    jobs = []
    for i in range(n):
        t += rng.expovariate(1 / 40.0)
        req = float(rng.choice([60, 300, 1200, 3600]))
        run = req * rng.random() ** 2
        procs = rng.choice([1, 1, 2, 4, 8, 16])
        jobs.append(TraceJob(i, t, run, procs, req, f"u{rng.randrange(5)}"))
    return jobs


@pytest.mark.parametrize("seed", range(4))
@settings(max_examples=15, deadline=None)
@given(
    max_wait_s=st.sampled_from([600.0, 1800.0, 7200.0]),
    reserve_after_s=st.sampled_from([0.0, 300.0, 1e9]),
    plan_with=st.sampled_from(["queued", "predicted"]),
)
def test_the_aging_guard_bounds_every_wait(
    seed: int, max_wait_s: float, reserve_after_s: float, plan_with: str
) -> None:
    """wait <= max_wait_s + (k + 1) * R for every job.

    R is the longest requested time and k the number of jobs submitted
    before the job that were still queued when it aged (they age first and
    go first); each head starts within R of becoming the head. With k = 0
    (no older job waiting) the bound is max_wait_s + R.
    """
    jobs = _workload(seed)
    policy = load_policy(
        "sky", max_wait_s=max_wait_s, reserve_after_s=reserve_after_s, plan_with=plan_with
    )
    starts = replay(jobs, 16, policy).starts
    longest = max(job.req_s for job in jobs)
    aged = 0
    for i, job in enumerate(jobs):
        wait = starts[i] - job.submit_s
        ages_at = job.submit_s + max_wait_s
        if wait > max_wait_s:
            aged += 1
        older = sum(
            1 for j in range(i) if jobs[j].submit_s < job.submit_s and starts[j] > ages_at
        )
        assert wait <= max_wait_s + (older + 1) * longest, (i, wait, older)
    assert aged > 0  # the workload is heavy enough that the guard is exercised


RESERVING = {"reserve_oldest": 2, "reserve_after_s": 0.0, "plan_with": "predicted"}


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots())
def test_reserving_the_oldest_keeps_capacity_and_gives_every_job_a_start(
    snapshot: Snapshot,
) -> None:
    policy = load_policy("sky", **RESERVING)
    timetable = plan(snapshot, policy)
    assert sorted(map(str, (p.job_id for p in timetable.entries))) == sorted(
        str(j.id) for j in snapshot.queued
    )
    assert _peak_use(policy.planning_view(snapshot), timetable.entries) <= CAPACITY
    busy = sum(r.procs for r in snapshot.running)
    assert busy + sum(p.procs for p in timetable.to_start_now) <= CAPACITY


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots())
def test_backfilling_delays_none_of_the_reserved_jobs(snapshot: Snapshot) -> None:
    policy = load_policy("sky", **RESERVING)
    timetable = plan(snapshot, policy)
    after = plan(_as_running(snapshot, timetable), policy)
    for reserved in timetable.reserved:
        assert after.start_of(reserved.job_id) <= reserved.start_s


@settings(max_examples=150, deadline=None)
@given(snapshot=snapshots())
def test_with_a_job_aged_backfilling_delays_no_reservation(snapshot: Snapshot) -> None:
    """The aging guard: with an aged job queued, the default sky plans on requested ends."""
    policy = load_policy("sky", max_wait_s=50.0, reserve_after_s=20.0)
    assume(any(job.submit_s <= snapshot.now_s - 50.0 for job in snapshot.queued))
    timetable = plan(snapshot, policy)
    after = plan(_as_running(snapshot, timetable), policy)
    for reserved in timetable.reserved:
        assert after.start_of(reserved.job_id) <= reserved.start_s


class _Spy(SkyPolicy):
    """sky, remembering every snapshot the replay handed it."""

    seen: list[Snapshot]

    def planning_view(self, snapshot: Snapshot) -> Snapshot:
        self.seen.append(snapshot)
        return super().planning_view(snapshot)


def test_the_replay_feeds_only_jobs_that_ended_before_now() -> None:
    jobs = _workload(7, n=60)
    spy = _Spy()
    spy.seen = []
    starts = replay(jobs, 16, spy).starts
    # the replay ends jobs in (end time, trace position) order
    ends = sorted((starts[i] + job.run_s, i, job.user, job.run_s) for i, job in enumerate(jobs))
    assert any(s.history for s in spy.seen)
    for snapshot in spy.seen:
        ended = [(user, run) for end, _, user, run in ends if end <= snapshot.now_s]
        for owner, history in snapshot.history.items():
            mine = [run for user, run in ended if user == owner]
            assert [e.runtime_s for e in history] == mine[-len(history) :]
