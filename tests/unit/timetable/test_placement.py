"""Price caps, the cost preference and deadlines, on several pools with prices and boot times."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skyport.timetable import Pool, QueuedJob, RunningJob, Snapshot, load_policy, plan
from skyport.timetable.profile import MIN_HOLD_S
from skyport.timetable.registry import BUILTIN_POLICIES
from skyport.timetable.snapshot import COST, TIME

ALL = sorted(BUILTIN_POLICIES)
NOW = 1_000.0
POOLS = (
    Pool("cheap", 16, price_per_hour=0.25, boot_s=30.0),
    Pool("mid", 12, price_per_hour=0.5, boot_s=10.0),
    Pool("fast", 8, price_per_hour=1.0, boot_s=0.0),
)


@st.composite
def priced_snapshots(draw: st.DrawFn, max_queued: int = 12) -> Snapshot:
    """Three pools of different prices and boot times; some jobs capped, some preferring cost."""
    running: list[RunningJob] = []
    for pool in POOLS:
        busy = 0
        for i in range(draw(st.integers(0, 3))):
            procs = draw(st.integers(1, pool.capacity))
            if busy + procs > pool.capacity:
                break
            busy += procs
            start = NOW - draw(st.integers(0, 50))
            running.append(RunningJob(f"r{pool.name}{i}", "u0", pool.name, procs, start,
                                      float(draw(st.integers(0, 80)))))
    queued = []
    for i in range(draw(st.integers(0, max_queued))):
        procs = draw(st.integers(1, 16))
        est = float(draw(st.integers(0, 60)))
        job = QueuedJob(f"q{i}", f"u{draw(st.integers(0, 3))}", NOW - draw(st.integers(0, 100)),
                        procs, est)
        cap = draw(st.sampled_from([None, None, 0.3 * procs, 0.6 * procs, 2.0 * procs]))
        prefer = draw(st.sampled_from([TIME, COST]))
        deadline = draw(st.sampled_from([None, NOW + est + 40, NOW + est + 400, NOW + 5]))
        queued.append(replace(job, max_price_per_hour=cap, prefer=prefer, deadline_s=deadline))
    return Snapshot(NOW, tuple(queued), tuple(running), POOLS)


def _by_name(name: str) -> Pool:
    return next(p for p in POOLS if p.name == name)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=60, deadline=None)
@given(snapshot=priced_snapshots())
def test_never_over_the_cap_and_capacity_holds(name: str, snapshot: Snapshot) -> None:
    policy = load_policy(name)
    table = plan(snapshot, policy)
    queued = {j.id: j for j in snapshot.queued}
    unplaceable = {u.job_id for u in table.unplaceable}
    assert {p.job_id for p in table.entries} | unplaceable == set(queued)
    for p in table.entries:
        job = queued[p.job_id]
        if job.max_price_per_hour is not None:
            assert job.node_price(_by_name(p.pool)) <= job.max_price_per_hour
        assert p.start_s >= snapshot.now_s
    # what starts now fits what is free now, pool by pool
    for pool in POOLS:
        busy = sum(r.procs for r in snapshot.running if r.pool == pool.name)
        starting = sum(p.procs for p in table.to_start_now if p.pool == pool.name)
        assert busy + starting <= pool.capacity
    # and the whole plan fits each pool at every instant (boot included)
    view = policy.planning_view(snapshot)
    est = {j.id: j.est_runtime_s for j in view.queued}
    for pool in POOLS:
        spans = [(snapshot.now_s, max(r.est_end_s, snapshot.now_s), r.procs)
                 for r in snapshot.running if r.pool == pool.name]
        # a reservation holds boot + estimate (at least MIN_HOLD_S in all)
        spans += [(p.start_s, p.start_s + max(pool.boot_s + est[p.job_id], MIN_HOLD_S), p.procs)
                  for p in table.entries if p.pool == pool.name]
        peak = max((sum(n for s, e, n in spans if s <= t < e) for t, _, _ in spans), default=0)
        assert peak <= pool.capacity


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=40, deadline=None)
@given(snapshot=priced_snapshots())
def test_cost_without_a_deadline_takes_the_cheapest_pool(name: str,
                                                        snapshot: Snapshot) -> None:
    table = plan(snapshot, load_policy(name))
    queued = {j.id: j for j in snapshot.queued}
    for p in table.entries:
        job = queued[p.job_id]
        if job.prefer != COST or job.deadline_s is not None:
            continue
        usable = [pool for pool in POOLS if pool.capacity >= job.procs and (
            job.max_price_per_hour is None or job.node_price(pool) <= job.max_price_per_hour)]
        assert job.node_price(_by_name(p.pool)) == min(job.node_price(q) for q in usable)


@settings(max_examples=60, deadline=None)
@given(snapshot=priced_snapshots())
def test_unplaceable_only_when_no_pool_could_serve(snapshot: Snapshot) -> None:
    table = plan(snapshot, load_policy("easy"))
    queued = {j.id: j for j in snapshot.queued}
    for u in table.unplaceable:
        job = queued[u.job_id]
        usable = [pool for pool in POOLS if pool.capacity >= job.procs and (
            job.max_price_per_hour is None or job.node_price(pool) <= job.max_price_per_hour)]
        late = job.deadline_s is not None and all(
            NOW + pool.boot_s + max(job.est_runtime_s, MIN_HOLD_S) > job.deadline_s
            for pool in usable)
        assert not usable or late, u.reason


def _snap(*queued: QueuedJob, running: tuple[RunningJob, ...] = ()) -> Snapshot:
    pools = (Pool("cheap", 8, price_per_hour=0.1, boot_s=600.0),
             Pool("fast", 8, price_per_hour=1.0, boot_s=10.0))
    return Snapshot(0.0, queued, running, pools)


@pytest.mark.parametrize("name", ["fcfs", "easy", "easy-sjf", "conservative", "sky"])
def test_the_four_placements(name: str) -> None:
    policy = load_policy(name)
    base = QueuedJob("j", "u", 0.0, 4, 3600.0)
    # no preference: the earliest start, ties to the cheaper pool (as before)
    assert plan(_snap(base), policy).by_job["j"].pool == "cheap"
    # a cap of 0.5 per node-hour (4 processors on one node: 0.4 on cheap, 4.0 on fast)
    capped = replace(base, max_price_per_hour=0.5, prefer=TIME)
    assert plan(_snap(capped), policy).by_job["j"].pool == "cheap"
    # prefer cost with a loose deadline: the cheap pool, though it boots slowly
    loose = replace(base, prefer=COST, deadline_s=3600.0 + 600.0 + 60.0)
    assert plan(_snap(loose), policy).by_job["j"].pool == "cheap"
    # a deadline only the fast pool meets: the fast pool
    tight = replace(base, prefer=COST, deadline_s=3600.0 + 100.0)
    assert plan(_snap(tight), policy).by_job["j"].pool == "fast"
    # a deadline no pool meets, or a cap under every pool: unplaceable, with the reason
    never = replace(base, prefer=COST, deadline_s=3000.0)
    table = plan(_snap(never), policy)
    assert [u.job_id for u in table.unplaceable] == ["j"]
    assert "deadline cannot be met" in table.unplaceable[0].reason
    broke = replace(base, max_price_per_hour=0.01)
    table = plan(_snap(broke), policy)
    assert "max_price_per_hour=0.01" in table.unplaceable[0].reason


def test_cost_waits_for_the_cheap_pool_when_the_deadline_allows() -> None:
    # the cheap pool is busy for an hour; the fast one is free
    busy = (RunningJob("r", "u", "cheap", 8, 0.0, 3600.0),)
    job = QueuedJob("j", "u", 0.0, 4, 3600.0, prefer=COST, deadline_s=4 * 3600.0)
    table = plan(_snap(job, running=busy), load_policy("easy"))
    assert not table.to_start_now
    assert table.by_job["j"].pool == "cheap" and table.by_job["j"].start_s == 3600.0
    # with a deadline the wait would break, it starts now on the fast pool
    hurry = replace(job, deadline_s=2 * 3600.0)
    table = plan(_snap(hurry, running=busy), load_policy("easy"))
    assert [(p.job_id, p.pool) for p in table.to_start_now] == [("j", "fast")]


def test_a_caller_price_per_job_overrides_the_pool_price() -> None:
    # the gate's flavor for this job costs 0.05 per node-hour on fast: under the cap there
    job = QueuedJob("j", "u", 0.0, 4, 60.0, max_price_per_hour=0.06,
                    node_prices=(("fast", 0.05), ("cheap", 0.2)))
    assert plan(_snap(job), load_policy("fcfs")).by_job["j"].pool == "fast"


def test_unknown_preference_is_unplaceable_with_the_allowed_values() -> None:
    job = QueuedJob("j", "u", 0.0, 1, 60.0, prefer="fastest")
    table = plan(_snap(job), load_policy("fcfs"))
    assert "allowed: 'time' or 'cost'" in table.unplaceable[0].reason


def test_a_cost_job_waiting_for_its_cheap_pool_says_so() -> None:
    from skyport.timetable.reasons import RESOURCES, wait_reasons

    busy = (RunningJob("r", "u", "cheap", 8, 0.0, 3600.0),)
    job = QueuedJob("j", "u", 0.0, 4, 3600.0, prefer=COST, deadline_s=4 * 3600.0)
    snapshot = _snap(job, running=busy)
    reason = wait_reasons(snapshot, plan(snapshot, load_policy("easy")))["j"]
    assert reason.code == RESOURCES and "0 free now" in reason.detail
    assert "on cheap (prefer=cost" in reason.detail
    # capped under the fast pool's price, a time job waits for cheap too: not "Priority"
    capped = replace(job, prefer=TIME, deadline_s=None, max_price_per_hour=0.5)
    snapshot = _snap(capped, running=busy)
    reason = wait_reasons(snapshot, plan(snapshot, load_policy("easy")))["j"]
    assert reason.code == RESOURCES
