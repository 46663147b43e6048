"""Every waiting job says why, through the real REST API and Core (the in-process double)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from skyport.client.testing import TestControlPlane
from skyport.errors import ConflictError, ValidationError
from skyport.models import Job, JobSpec, JobState, Resources

S = JobState


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    """A gate of 2 nodes x 4 cores: 8 cores in all."""
    with TestControlPlane(tmp_path / "cp", gate={"cpus": 4, "max_nodes": 2}) as plane:
        yield plane


def spec(nodes: int = 1, cpus: int = 1, priority: int = 0) -> JobSpec:
    return JobSpec(script="#!/bin/bash\ntrue\n", priority=priority,
                   resources=Resources(nodes=nodes, cpus_per_node=cpus))


def until(cp: TestControlPlane, job_id: str, reason: str) -> Job:
    deadline = time.monotonic() + 30
    while True:
        job = cp.client().job(job_id)
        if job.wait_reason == reason:
            return job
        assert time.monotonic() < deadline, (job.state, job.wait_reason, job.wait_detail)
        time.sleep(0.01)


@pytest.mark.parametrize(("nodes", "cpus", "asked"), [(3, 1, "3 nodes"), (2, 5, "5 cpus"),
                                                        (1, 9, "9 cpus")])
def test_a_request_no_gate_can_ever_hold_is_refused_and_nothing_is_queued(
        cp: TestControlPlane, nodes: int, cpus: int, asked: str) -> None:
    with pytest.raises(ValidationError) as info:
        cp.client().submit(spec(nodes, cpus))
    assert info.value.field == "resources" and "no gate can ever run this" in info.value.allowed
    assert cp.client().jobs() == []


def test_resources_then_priority_with_planned_starts(cp: TestControlPlane) -> None:
    c = cp.client()
    big = c.submit(spec(nodes=2, cpus=3)).id
    cp.start(big)  # 6 of 8 cores busy
    wide = c.submit(spec(nodes=2, cpus=4)).id  # needs all 8
    small = c.submit(spec(cpus=1)).id  # 2 cores are free, but fcfs keeps them for "wide"
    job = until(cp, wide, "Resources")
    assert job.wait_detail is not None and "needs 8 cores, 2 free now" in job.wait_detail
    assert job.planned_start_at is not None
    job = until(cp, small, "Priority")
    assert "held for jobs ahead of it" in (job.wait_detail or "")
    table = c.timetable()
    assert {e.job_id: e.reason for e in table.entries}[wide] == "Resources"


def test_a_held_job_says_so_and_starts_only_after_release(cp: TestControlPlane) -> None:
    c = cp.client()
    blocker = c.submit(spec(nodes=2, cpus=4)).id
    cp.start(blocker)  # every core busy: the next job cannot start before the hold
    job_id = c.submit(spec()).id
    until(cp, job_id, "Resources")
    assert c.hold(job_id).held
    held = until(cp, job_id, "Held")
    assert held.planned_start_at is None
    assert held.wait_detail == f"held: 'skyport release {job_id}' puts it back in the queue"
    assert job_id not in {e.job_id for e in c.timetable().entries}
    cp.agents(blocker).exit(0)
    time.sleep(0.1)
    assert c.job(job_id).state == S.QUEUED  # the cores are free, but it is held
    assert not c.release(job_id).held
    cp.wait_state(job_id, S.PROVISIONING, S.STAGING_IN, S.RUNNING)


def test_only_a_queued_job_can_be_held(cp: TestControlPlane) -> None:
    c = cp.client()
    job_id = c.submit(spec()).id
    cp.start(job_id)
    with pytest.raises(ConflictError, match="only a QUEUED job can be held"):
        c.hold(job_id)


def test_another_users_job_cannot_be_held(cp: TestControlPlane) -> None:
    job_id = cp.client("alice").submit(spec(nodes=2, cpus=4)).id
    with pytest.raises(Exception, match="no job"):
        cp.client("mallory").hold(job_id)


def test_provisioning_is_a_reason_too(cp: TestControlPlane) -> None:
    job_id = cp.client().submit(spec()).id
    job = cp.wait_state(job_id, S.PROVISIONING)
    assert cp.client().job(job_id).wait_reason == "Provisioning"
    assert job.state == S.PROVISIONING
