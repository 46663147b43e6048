"""--max-price, --prefer and --deadline through the real REST API and Core (in-process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from skyport.client.testing import TestControlPlane
from skyport.errors import ValidationError
from skyport.models import JobSpec, JobState, Resources
from skyport.units import parse_deadline

S = JobState


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    """One gate: nodes of 4 cores at 1.0 per node-hour, 8 cores in all."""
    with TestControlPlane(tmp_path / "cp",
                          gate={"cpus": 4, "max_nodes": 2, "price_per_hour": 1.0}) as plane:
        yield plane


def spec(nodes: int = 1, time_s: int = 3600, **placement: object) -> JobSpec:
    return JobSpec(script="#!/bin/bash\ntrue\n",
                   resources=Resources(nodes=nodes, cpus_per_node=4, time_limit_s=time_s),
                   **placement)


def refused(cp: TestControlPlane, job: JobSpec) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        cp.client().submit(job)
    assert cp.client().jobs() == []  # nothing queued, nothing half-made
    return info.value


def test_a_cap_under_every_flavor_is_refused_with_the_cheapest_price(
        cp: TestControlPlane) -> None:
    err = refused(cp, spec(max_price_per_hour=0.5))
    assert err.field == "max_price_per_hour" and err.value == 0.5
    assert "at least 1 per node-hour" in err.allowed and "mem-4 on gate memory" in err.allowed
    job = cp.client().submit(spec(max_price_per_hour=1.0))  # at the cap is allowed
    assert job.spec.max_price_per_hour == 1.0


@pytest.mark.parametrize(("deadline", "allowed"), [
    ("2020-01-01T00:00+00:00", "a time in the future"),
    ("+30m", "the fastest gate, memory, needs 0 s to boot plus the time limit 3600 s"),
    ("+999999d", "at most 366 days ahead"),
    ("+1s", "the fastest gate"),
])
def test_a_deadline_that_cannot_be_met_is_refused(cp: TestControlPlane, deadline: str,
                                                  allowed: str) -> None:
    err = refused(cp, spec(deadline=deadline))
    assert err.field == "deadline" and allowed in err.allowed, err.allowed


def test_a_relative_deadline_is_stored_as_a_time(cp: TestControlPlane) -> None:
    before = time.time()
    job = cp.client().submit(spec(deadline="+2h", prefer="cost"))
    assert job.spec.deadline is not None and not job.spec.deadline.startswith("+")
    at = datetime.fromisoformat(job.spec.deadline).timestamp()
    assert before + 7200 - 2 <= at <= time.time() + 7200 + 2
    assert job.spec.prefer == "cost"


def test_the_timetable_shows_gate_flavor_and_estimated_cost(cp: TestControlPlane) -> None:
    mine = cp.client("alice").submit(spec(nodes=2, time_s=1800, prefer="cost")).id
    cp.wait_planned(mine)
    entries = {e.job_id: e for e in cp.client("alice").timetable().entries}
    e = entries[mine]
    assert (e.gate, e.flavor, e.prefer) == ("memory", "mem-4", "cost")
    assert e.est_cost == pytest.approx(2 * 1.0 * 0.5)  # nodes x price x hours
    theirs = [x for x in cp.client("bob").timetable().entries if x.job_id == ""]
    assert theirs and all(x.est_cost is None and x.deadline is None for x in theirs)


def test_a_job_whose_deadline_becomes_unreachable_ends_with_the_reason(
        cp: TestControlPlane) -> None:
    c = cp.client()
    blocker = c.submit(spec(nodes=2)).id
    cp.start(blocker)  # every core busy for an hour
    late = c.submit(spec(time_s=1, deadline="+3s")).id  # feasible now, not once 2 s pass
    job = cp.wait_state(late, S.CANCELLED)
    assert "can never run: deadline cannot be met" in job.reason


def test_deadline_forms() -> None:
    assert parse_deadline("+90m") == "+5400s"
    assert parse_deadline("2026-12-24T18:00+01:00") == "2026-12-24T17:00:00+00:00"
    local = parse_deadline("2026-12-24T18:00")  # no zone: this machine's local time
    expect = datetime(2026, 12, 24, 18, 0).astimezone().astimezone(UTC).isoformat()
    assert local == expect
    for bad in ("", "+", "+-5m", "soon", "0001-01-01T00:00", "+1e9s"):
        with pytest.raises(ValueError):
            parse_deadline(bad)


def test_the_snapshot_prices_constrained_jobs_on_their_own_flavor() -> None:
    from skyport.core.planning import build_snapshot, pool_of
    from skyport.gate import Capacity, Flavor
    from skyport.models import Job

    flavors = {
        "big": [Flavor("small", 2, 1024, price_per_hour=0.2), Flavor("large", 8, 4096,
                                                                     price_per_hour=0.6)],
        "tiny": [Flavor("t", 2, 1024, price_per_hour=0.1)],  # holds no 4-core node
    }
    pools = [pool_of(g, Capacity(16, 16), f) for g, f in flavors.items()]
    now = datetime.now(UTC)

    def job(i: str, **placement: object) -> Job:
        return Job(id=i, owner="u", spec=spec(**placement), state=S.QUEUED, submitted_at=now)

    snap = build_snapshot(now.timestamp(), [job("plain"), job("capped", max_price_per_hour=1.0,
                                                              deadline="+2h")],
                          [], [], pools, lambda j: (), flavors)
    plain, capped = snap.queued
    assert (plain.node_prices, plain.allowed_pools, plain.constrained) == ((), (), False)
    assert capped.node_prices == (("big", 0.6),) and capped.allowed_pools == ("big",)
    assert capped.deadline_s == pytest.approx(now.timestamp() + 7200)


@pytest.mark.parametrize(("field", "value"), [
    ("prefer", "cheapest"), ("deadline", "tomorrow"), ("deadline", "+1e9s"),
    ("deadline", "2026-12-24T18:00\nX"), ("deadline", "9" * 5000), ("max_price_per_hour", -1),
    ("max_price_per_hour", "Infinity"),
])
def test_hostile_placement_fields_on_the_wire_are_refused(cp: TestControlPlane, field: str,
                                                          value: object) -> None:
    body = spec().model_dump(mode="json")
    body[field] = value
    c = cp.client()
    with pytest.raises(ValidationError) as info:
        c._json("POST", "/v1/jobs", json={"spec": body})
    assert field in str(info.value)
    assert c.jobs() == []
