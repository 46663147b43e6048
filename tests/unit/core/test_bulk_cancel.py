"""scancel's bulk forms: many jobs in one call and one store transaction."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from skyport.cli import cli
from skyport.client.testing import TestControlPlane
from skyport.errors import ValidationError
from skyport.models import JobSpec, JobState, Resources

S = JobState


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp", gate={"cpus": 1, "max_nodes": 1}) as plane:
        yield plane


def submit(cp: TestControlPlane, name: str, user: str = "alice") -> str:
    spec = JobSpec(name=name, script="#!/bin/bash\ntrue\n", resources=Resources(cpus_per_node=1))
    return cp.client(user).submit(spec).id


def test_cancel_by_ids_by_name_by_state_and_all(cp: TestControlPlane) -> None:
    alice = cp.client("alice")
    running = submit(cp, "run-0")
    cp.start(running)  # the one core is busy: the rest stay QUEUED
    sweep = [submit(cp, f"sweep-{i}") for i in range(5)]
    other = submit(cp, "post")
    bobs = submit(cp, "sweep-bob", user="bob")

    answer = alice.cancel_many(sweep[:2] + ["nope"])
    assert answer.cancelled == sweep[:2] and answer.not_found == ["nope"]
    answer = alice.cancel_many(name="sweep-*")  # bob's sweep is not alice's
    assert sorted(answer.cancelled) == sorted(sweep[2:])
    assert cp.client("bob").job(bobs).state == S.QUEUED
    answer = alice.cancel_many(states=["QUEUED"])
    assert answer.cancelled == [other]
    assert alice.job(running).state == S.RUNNING
    answer = alice.cancel_many(all=True)
    assert answer.cancelled == [running]
    assert all(j.state == S.CANCELLED for j in alice.jobs())
    assert alice.cancel_many(sweep[:1]).already_ended == sweep[:1]  # nothing to do twice
    events = [e.reason for e in alice.job(sweep[0]).events if e.state == S.CANCELLED]
    assert events == ["cancelled by alice"]


def test_ids_of_another_user_are_not_found_for_a_user_and_cancelled_for_an_admin(
        cp: TestControlPlane) -> None:
    bobs = submit(cp, "b", user="bob")
    assert cp.client("mallory").cancel_many([bobs]).not_found == [bobs]
    assert cp.client("bob").job(bobs).state != S.CANCELLED
    assert cp.client("admin").cancel_many([bobs]).cancelled == [bobs]


def test_a_selection_is_required_and_terminal_states_are_refused(cp: TestControlPlane) -> None:
    with pytest.raises(ValidationError, match="job ids, --state, --name or --all"):
        cp.client("alice").cancel_many()
    with pytest.raises(ValidationError):
        cp.client("alice").cancel_many(states=["SUCCEEDED"])


def test_the_cli_cancels_many(cp: TestControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("skyport.cli.app.client_factory", lambda home, user: cp.client("alice"))
    ids = [submit(cp, f"s{i}") for i in range(3)]
    result = CliRunner().invoke(cli, ["cancel", ids[0], ids[1]])
    assert result.exit_code == 0 and result.stdout.startswith("cancelled 2 job(s)")
    result = CliRunner().invoke(cli, ["cancel", "--all", "--json"])
    assert result.exit_code == 0, result.output
    assert '"cancelled": [' in result.stdout and ids[2] in result.stdout
    assert CliRunner().invoke(cli, ["cancel"]).exit_code == 2
    assert CliRunner().invoke(cli, ["cancel", "--all", "--checkpoint"]).exit_code == 2
