"""Budgets and cost reports through the real API and Core (``TestControlPlane``).

The memory gate prices a node at 3600 per hour: one per second, so a job of
1 node and a 60 s limit has a worst case of 60.00.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from skyport.cli import cli
from skyport.client.testing import TestControlPlane
from skyport.errors import ConflictError, PermissionDeniedError, ValidationError
from skyport.models import JobSpec, JobState, Resources

S = JobState
PRICE = {"price_per_hour": 3600.0, "cpus": 1, "max_nodes": 2, "total_cpus": 4}


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp", gate=PRICE) as plane:
        yield plane


def spec(name: str = "j", limit_s: int = 60, nodes: int = 1) -> JobSpec:
    return JobSpec(name=name, script="#!/bin/bash\ntrue\n",
                   resources=Resources(nodes=nodes, time_limit_s=limit_s))


def until(cp: TestControlPlane, job_id: str, check, what: str):  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + cp.wait_s
    while True:
        job = cp.client("admin").job(job_id)
        if check(job):
            return job
        assert time.monotonic() < deadline, (what, job.state, job.wait_reason, job.wait_detail)
        time.sleep(0.01)


def test_a_job_waits_for_budget_and_runs_once_an_admin_raises_it(cp: TestControlPlane) -> None:
    admin, alice = cp.client(), cp.client("alice")
    admin.set_budget("alice", 100)
    first = alice.submit(spec("first")).id
    cp.start(first)  # commits its worst case: 60.00
    second = alice.submit(spec("second")).id
    job = until(cp, second, lambda j: j.wait_reason == "Budget", "the Budget reason")
    assert job.state == S.QUEUED and job.planned_start_at is None  # out of planning
    assert job.wait_detail == "needs 60.00, 40.00 of 100.00 left this month"
    view = alice.budget()
    assert (view.limit, view.period, view.waiting) == (100.0, "month", [second])
    assert view.spent + view.committed == pytest.approx(60.0)  # what runs moves to spent
    assert view.remaining == pytest.approx(40.0)

    raised = admin.set_budget("alice", 200)
    assert raised.limit == 200.0 and raised.set_by == "admin"
    cp.wait_state(second, S.PROVISIONING)  # planned again at once
    cp.agents(first).exit(0)
    cp.run(second)
    view = alice.budget()
    assert view.committed == 0.0 and view.waiting == []
    ran = [alice.job(j) for j in (first, second)]
    expected = sum(b - a for j in ran for a, b in j.running_spans())  # one per second
    assert view.spent == pytest.approx(expected) and view.spent > 0
    report = alice.cost()
    assert [(r.key, r.jobs) for r in report.rows] == [("memory", 2)]
    assert report.total == pytest.approx(expected) and report.user == "alice"


def test_a_job_the_budget_can_never_hold_is_refused_and_one_left_behind_is_ended(
        cp: TestControlPlane) -> None:
    admin, alice = cp.client(), cp.client("alice")
    admin.set_budget("alice", 100, "week")
    with pytest.raises(ConflictError, match=r"over budget: its worst case 120\.00 is more "
                                            r"than alice's whole budget of 100\.00 per week"):
        alice.submit(spec(nodes=2))
    assert alice.jobs() == []  # nothing queued
    blocker = alice.submit(spec("blocker")).id
    cp.start(blocker)
    queued = alice.submit(spec("queued")).id  # 60 + 60 > 100: waits
    until(cp, queued, lambda j: j.wait_reason == "Budget", "the Budget reason")
    admin.set_budget("alice", 50, "week")  # now it never fits; the running one runs on
    ended = cp.wait_state(queued, S.CANCELLED)
    assert ended.reason == ("over budget: its worst case 60.00 is more than alice's whole "
                            "budget of 50.00 per week")
    assert alice.job(blocker).state == S.RUNNING


def test_a_total_budget_counts_what_was_spent_for_good(cp: TestControlPlane) -> None:
    admin, alice = cp.client(), cp.client("alice")
    admin.set_budget("alice", 60.0, "total")
    job = alice.submit(spec()).id
    cp.start(job)
    until(cp, job, lambda j: alice.budget().spent > 0, "some spending")
    cp.agents(job).exit(0)
    spent = alice.budget().spent
    ran = alice.job(job)
    assert spent == pytest.approx(sum(b - a for a, b in ran.running_spans()))  # one per second
    with pytest.raises(ConflictError, match="more than the .* left of alice's total budget"):
        alice.submit(spec())
    assert len(alice.jobs()) == 1


def test_held_jobs_commit_nothing_and_users_without_a_budget_never_wait(
        cp: TestControlPlane) -> None:
    admin, bob, alice = cp.client(), cp.client("bob"), cp.client("alice")
    assert bob.budget().limit is None  # no budget: nothing waits for money
    for name in ("b1", "b2"):  # the gate's 4 cores are taken
        cp.wait_state(bob.submit(spec(name, limit_s=3600 * 24, nodes=2)).id, S.PROVISIONING)
    assert bob.budget().committed == pytest.approx(2 * 2 * 3600 * 24)
    admin.set_budget("alice", 60)
    queued = alice.submit(spec("queued")).id
    until(cp, queued, lambda j: j.wait_reason == "Resources", "waiting for cores")
    assert alice.budget().committed == pytest.approx(60.0)  # queued: committed
    alice.hold(queued)
    assert alice.budget().committed == 0.0  # held: out of planning, commits nothing
    alice.release(queued)
    assert alice.budget().committed == pytest.approx(60.0)


def test_only_an_admin_sets_a_budget_and_bad_amounts_change_nothing(
        cp: TestControlPlane) -> None:
    admin, alice = cp.client(), cp.client("alice")
    with pytest.raises(PermissionDeniedError, match="only an admin may set a budget"):
        alice.set_budget("alice", 1e9)
    assert admin.budget("alice").limit is None
    admin.set_budget("alice", 5)
    for bad in (-1, float("inf"), float("nan"), 1e13):
        with pytest.raises(ValidationError) as info:
            admin.set_budget("alice", bad)
        assert info.value.field == "limit"
    for body in ({"limit": "five"}, {"limit": 5, "period": "year"}, {"limit": 5, "x": 1},
                 {"limit": True}, {"limit": "5"}):
        with pytest.raises(ValidationError):
            admin.call("PUT", "/v1/budgets/alice", dict, json=body)
    for name in ("Alice!", "../admin", "a" * 65, ""):
        with pytest.raises(ValidationError):
            admin.set_budget(name, 5)
    assert (admin.budget("alice").limit, admin.budget("alice").period) == (5.0, "month")


def test_another_users_budget_and_costs_are_refused(cp: TestControlPlane) -> None:
    admin, alice = cp.client(), cp.client("alice")
    admin.set_budget("bob", 7)
    with pytest.raises(PermissionDeniedError, match="another user's budget"):
        alice.budget("bob")
    with pytest.raises(PermissionDeniedError, match="another user's cost report"):
        alice.cost(user="bob")
    assert alice.cost().user == "alice"  # a user's report is their own by default
    assert admin.cost().user is None and admin.budget("bob").limit == 7.0
    for since in ("last tuesday", "0001-01-01T00:00+05:00", "9999-12-31", "x" * 64):
        with pytest.raises(ValidationError, match="invalid since"):
            alice.cost(since=since)
    assert alice.cost(since="1970-01-01").since is not None
    with pytest.raises(ValidationError):
        alice.cost(by="planet")


def test_the_accounting_outlives_the_control_plane(tmp_path: Path) -> None:
    with TestControlPlane(tmp_path / "cp", gate=PRICE) as cp:
        cp.client().set_budget("alice", 100, "week")
        job = cp.client("alice").submit(spec()).id
        cp.run(job)
        before = cp.client("alice").budget()
        report = cp.client("alice").cost(by="day")
    with TestControlPlane(tmp_path / "cp", gate=PRICE) as cp:  # the same store
        after = cp.client("alice").budget()
        assert (after.limit, after.period, after.spent) == (100.0, "week", before.spent)
        assert cp.client("alice").cost(by="day").rows == report.rows


def test_the_cli_shows_sets_and_draws(cp: TestControlPlane, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    who = {"name": "admin"}
    monkeypatch.setattr("skyport.cli.app.client_factory",
                        lambda home, user: cp.client(who["name"]))
    run = CliRunner().invoke
    result = run(cli, ["budget", "set", "alice", "100", "--period", "week"])
    assert result.exit_code == 0, result.output
    assert "100.00 per week" in result.stdout
    who["name"] = "alice"
    blocker = cp.client("alice").submit(spec()).id
    cp.start(blocker)
    waiting = cp.client("alice").submit(spec("second")).id
    until(cp, waiting, lambda j: j.wait_reason == "Budget", "the Budget reason")
    result = run(cli, ["budget", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["waiting"] == [waiting]
    assert "Budget" in run(cli, ["jobs"]).stdout
    shown = [line.split() for line in run(cli, ["show", waiting]).stdout.splitlines()]
    assert ["waits:", "Budget:", "needs", "60.00,"] in [words[:4] for words in shown]
    result = run(cli, ["budget", "set", "alice", "1000"])
    assert result.exit_code == 1 and "only an admin may set a budget" in result.stderr
    assert run(cli, ["budget", "--user", "bob"]).exit_code == 1
    cp.agents(blocker).exit(0)
    picture = tmp_path / "cost.png"
    result = run(cli, ["cost", "--by", "day", "--output", str(picture)])
    assert result.exit_code == 0, result.output
    assert picture.read_bytes()[:4] == b"\x89PNG" and "total" in result.stdout
    assert run(cli, ["cost", "--output", str(tmp_path / "cost.txt")]).exit_code == 1
    result = run(cli, ["cost", "--json"])
    assert json.loads(result.stdout)["total"] > 0
