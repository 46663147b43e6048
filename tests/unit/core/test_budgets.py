"""Budgets, pure: calendar periods, what ran and what it cost, commitments, who waits.

No store, no clock: jobs are ``Job`` records with their events, ``now`` is passed in.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from skyport.core.budgets import (
    Budget,
    CostRow,
    commitment,
    cost_rows,
    job_cost,
    never_fits,
    node_price,
    period_end,
    period_start,
    running_spans,
    standing,
    worst_case,
)
from skyport.gate import Flavor
from skyport.models import Event, Job, JobSpec, JobState, Resources

S = JobState


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def spec(nodes: int = 1, cpus: int = 1, hours: float = 1.0, **kw: Any) -> JobSpec:
    return JobSpec(script="#!/bin/bash\ntrue\n", resources=Resources(
        nodes=nodes, cpus_per_node=cpus, time_limit_s=int(hours * 3600)), **kw)


def job(id: str = "a", state: JobState = S.QUEUED, events: list[tuple[str, JobState]] = (),
        *, nodes: int = 1, hours: float = 1.0, price: float | None = None,
        owner: str = "alice", gate: str | None = None, **kw: Any) -> Job:
    evs = [Event(time=datetime.fromisoformat(t).replace(tzinfo=UTC), state=s, reason="")
           for t, s in events]
    return Job(id=id, owner=owner, spec=spec(nodes, hours=hours), state=state,
               submitted_at=datetime(2026, 1, 1, tzinfo=UTC), price_per_hour=price,
               gate=gate, events=evs, **kw)


# -- periods --------------------------------------------------------------------------


@pytest.mark.parametrize(("period", "now", "start", "end"), [
    ("month", "2026-12-02T10:30:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ("month", "2026-12-01T00:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ("month", "2026-11-30T23:59:59", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
    ("month", "2028-02-29T12:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
    # ISO weeks: from Monday 00:00 UTC (2026-11-30 is a Monday)
    ("week", "2026-12-02T10:30:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
    ("week", "2026-12-06T23:59:59", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
    ("week", "2026-12-07T00:00:00", "2026-12-07T00:00:00", "2026-12-14T00:00:00"),
    ("week", "2026-12-31T08:00:00", "2026-12-28T00:00:00", "2027-01-04T00:00:00"),
])
def test_periods_are_calendar_periods_in_utc(period: str, now: str, start: str,
                                             end: str) -> None:
    assert period_start(period, ts(now)) == ts(start)
    assert period_end(period, ts(now)) == ts(end)


def test_a_total_budget_has_no_period_and_an_unknown_one_is_refused() -> None:
    assert period_start("total", ts("2026-12-02T10:30:00")) is None
    assert period_end("total", ts("2026-12-02T10:30:00")) is None
    with pytest.raises(ValueError, match="one of month, week, total"):
        period_start("year", 0.0)


# -- what ran and what it cost ----------------------------------------------------------


def test_running_spans_of_every_attempt_and_the_open_one_ends_now() -> None:
    j = job(state=S.RUNNING, events=[
        ("2026-12-01T10:00:00", S.QUEUED), ("2026-12-01T10:00:05", S.STAGING_IN),
        ("2026-12-01T10:00:10", S.RUNNING),
        ("2026-12-01T10:00:30", S.RUNNING),  # a note in the same state: no new stretch
        ("2026-12-01T10:01:10", S.QUEUED),  # node lost: requeued
        ("2026-12-01T10:02:00", S.STAGING_IN), ("2026-12-01T10:02:10", S.RUNNING)])
    now = ts("2026-12-01T10:03:10")
    assert running_spans(j, now) == [(ts("2026-12-01T10:00:10"), ts("2026-12-01T10:01:10")),
                                     (ts("2026-12-01T10:02:10"), now)]
    # 2 minutes of a 2-node cluster priced 7.20 per hour (3.60 per node-hour)
    assert job_cost(j.model_copy(update={"price_per_hour": 7.2}), None, now) == \
        pytest.approx(7.2 * 120 / 3600)
    assert job_cost(j, None, now) == 0.0  # no price known: nothing charged


def test_a_cost_counts_only_what_ran_in_the_period() -> None:
    j = job(state=S.SUCCEEDED, price=3600.0, events=[  # one per second
        ("2026-11-30T23:59:00", S.RUNNING), ("2026-12-01T00:01:00", S.STAGING_OUT),
        ("2026-12-01T00:02:00", S.SUCCEEDED)])
    now = ts("2026-12-02T00:00:00")
    assert job_cost(j, period_start("month", now), now) == pytest.approx(60.0)
    assert job_cost(j, None, now) == pytest.approx(120.0)  # staging out costs nothing


def test_the_cost_report_by_day_splits_a_run_over_midnight() -> None:
    a = job("a", S.SUCCEEDED, [("2026-11-30T23:00:00", S.RUNNING),
                               ("2026-12-01T01:00:00", S.SUCCEEDED)],
            price=2.0, nodes=2, gate="cheap")
    b = job("b", S.SUCCEEDED, [("2026-12-01T02:00:00", S.RUNNING),
                               ("2026-12-01T03:00:00", S.FAILED)],
            price=10.0, owner="bob", gate="fast")
    now = ts("2026-12-02T00:00:00")
    assert cost_rows([a, b], None, now, "day") == [
        CostRow("2026-11-30", 2.0, 2.0, 1), CostRow("2026-12-01", 12.0, 3.0, 2)]
    assert cost_rows([a, b], None, now, "gate") == [
        CostRow("fast", 10.0, 1.0, 1), CostRow("cheap", 4.0, 4.0, 1)]
    assert cost_rows([a, b], ts("2026-12-01T00:00:00"), now, "user") == [
        CostRow("bob", 10.0, 1.0, 1), CostRow("alice", 2.0, 2.0, 1)]
    assert cost_rows([a, b], ts("2026-12-01T04:00:00"), now, "gate") == []


# -- worst cases and commitments ---------------------------------------------------------


FLAVORS = {
    "cheap": [Flavor("c2", cpus=2, mem_mb=4096, price_per_hour=0.10, max_nodes=8)],
    "fast": [Flavor("f4", cpus=4, mem_mb=8192, price_per_hour=0.90, max_nodes=8),
             Flavor("f64", cpus=64, mem_mb=8192, gpus=8, price_per_hour=20.0, max_nodes=8)],
}


def test_the_worst_case_is_the_dearest_node_hour_any_gate_could_give() -> None:
    # 2 cores fit everywhere: the GPU flavor is the dearest that could hold it
    assert node_price(spec(cpus=2), FLAVORS) == 20.0
    assert node_price(spec(cpus=2, gate="cheap"), FLAVORS) == 0.10
    assert node_price(spec(cpus=3, gate="fast", flavor="f4"), FLAVORS) == 0.90
    assert node_price(spec(cpus=2, max_price_per_hour=0.5), FLAVORS) == 0.5  # the cap
    assert node_price(spec(cpus=2, gate="cheap", max_price_per_hour=0.5), FLAVORS) == 0.10
    assert node_price(spec(nodes=9), FLAVORS) == 0.0  # nothing holds it (intake refuses it)
    # nodes x price per node-hour x hours
    assert worst_case(spec(nodes=2, hours=1.5), 0.4) == pytest.approx(1.2)


def test_a_live_job_commits_its_worst_case_less_what_this_attempt_ran() -> None:
    now = ts("2026-12-01T10:30:00")
    queued = job(nodes=2, hours=2.0)
    assert commitment(queued, 0.5, now) == pytest.approx(2.0)
    # on a cluster: its real price (the whole cluster's, 0.6 per hour), not the worst flavor
    running = job(state=S.RUNNING, nodes=2, hours=2.0, price=0.6,
                  started_at=datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    assert commitment(running, 0.5, now) == pytest.approx(0.6 * 1.5)
    staging = running.model_copy(update={"state": S.STAGING_IN})
    assert commitment(staging, 0.5, now) == pytest.approx(1.2)
    past_limit = running.model_copy(update={"started_at": datetime(2026, 12, 1, tzinfo=UTC)})
    assert commitment(past_limit, 0.5, now) == 0.0
    assert commitment(running.model_copy(update={"state": S.STAGING_OUT}), 0.5, now) == 0.0
    assert commitment(running.model_copy(update={"state": S.SUCCEEDED}), 0.5, now) == 0.0


def test_jobs_are_admitted_in_order_while_the_budget_holds_them() -> None:
    budget = Budget("alice", 5.0, "month")
    live = [(job("r", S.RUNNING), 2.8)]
    queued = [(job("a"), 1.2), (job("big"), 6.0), (job("b"), 0.4), (job("c"), 0.0)]
    st = standing(budget, 1.0, live, queued, since=None)
    # 1.00 spent + 2.80 running + 1.20 for a = 5.00 exactly: a fits, b would pass the limit
    assert st.committed == pytest.approx(4.0) and st.remaining == pytest.approx(0.0)
    assert st.waiting == {"b": "needs 0.40, 0.00 of 5.00 left this month",
                          "c": "needs 0.00, 0.00 of 5.00 left this month; behind job b"}
    assert st.never == {"big": "its worst case 6.00 is more than alice's whole budget of "
                               "5.00 per month"}
    # the big job fits the limit, not what is left: it waits, and the small ones behind it
    # (no overtaking: a big job is not starved by a stream of small ones)
    st = standing(Budget("alice", 6.0, "week"), 1.0, live, queued, since=None)
    assert st.never == {} and list(st.waiting) == ["big", "b", "c"]
    assert st.waiting["b"] == "needs 0.40, 1.00 of 6.00 left this week; behind job big"
    st = standing(Budget("alice", 12.0, "total"), 1.0, live, queued, since=None)
    assert st.waiting == {} and st.never == {}
    assert st.committed == pytest.approx(2.8 + 1.2 + 6.0 + 0.4)


def test_what_can_never_fit_under_a_monthly_and_a_total_budget() -> None:
    assert never_fits(Budget("u", 5.0, "month"), spent=4.0, worst=5.0) is None  # next month
    assert never_fits(Budget("u", 5.0, "total"), spent=4.0, worst=1.0) is None
    assert never_fits(Budget("u", 5.0, "total"), spent=4.0, worst=1.5) == (
        "its worst case 1.50 is more than the 1.00 left of u's total budget of 5.00")
    assert never_fits(Budget("u", 0.0, "week"), spent=0.0, worst=0.0) is None  # free is free
