"""Script and function jobs end to end on the shared control plane."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

import skyport
from skyport.errors import NotFoundError, PermissionDeniedError, ValidationError
from skyport.models import JobState
from skyport.protocol import WhoAmI
from skyport.script import build_spec, cli_directives

from .conftest import LOCAL_CPUS, ControlPlane, processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HELLO = """#!/bin/bash
#SKYPORT --name=hello
#SKYPORT --cpus-per-node=2 --mem=256M --time=00:02:00
#SKYPORT --input={input} --output=result.txt --env=GREETING=hi
echo "job $SKYPORT_JOB_ID on $SKYPORT_NODE_NAME rank $SKYPORT_NODE_RANK of $SKYPORT_NUM_NODES"
echo "workdir=$SKYPORT_WORKDIR"
echo "$GREETING $(cat in.txt)" > result.txt
echo "to stderr" >&2
"""


def _wait(client, job_id: str, timeout: float = 90) -> object:
    return client.wait(job_id, timeout=timeout)


def test_script_job_runs_with_inputs_outputs_and_logs(admin, tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("world")
    spec = build_spec(HELLO.format(input=data.as_uri()))
    job = admin.submit(spec)
    assert job.state == JobState.QUEUED
    done = _wait(admin, job.id)
    assert done.state == JobState.SUCCEEDED, done.events
    assert done.exit_code == 0
    states = [e.state for e in done.events]
    # staging progress is an event in the same state ("staged in 5 B of 5 B"): one per state
    assert [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]] == [
        JobState.QUEUED,
        JobState.SCHEDULED,
        JobState.PROVISIONING,
        JobState.STAGING_IN,
        JobState.RUNNING,
        JobState.STAGING_OUT,
        JobState.SUCCEEDED,
    ]
    assert "staged in 5 B of 5 B" in [e.reason for e in done.events]  # "world"
    assert all(e.reason for e in done.events)
    out = admin.logs(job.id, "stdout").data.decode()
    assert f"job {job.id} on {done.node_names[0]} rank 0 of 1" in out
    assert admin.logs(job.id, "stderr").data.decode() == "to stderr\n"
    assert admin.download(job.id, "outputs/result.txt") == b"hi world\n"
    paths = {f.path for f in admin.files(job.id)}
    assert {"script.sh", "inputs/in.txt", "outputs/result.txt", "logs/stdout"} <= paths
    fetched = admin.fetch(job.id, tmp_path / "fetched")
    assert (tmp_path / "fetched" / "outputs" / "result.txt").read_text() == "hi world\n"
    assert fetched
    # the cluster is gone with the job
    assert processes_of_job(job.id) == []


def test_failing_script_keeps_its_exit_code(admin) -> None:
    job = admin.submit(build_spec("#!/bin/bash\necho before\nexit 3\n"))
    done = _wait(admin, job.id)
    assert done.state == JobState.FAILED
    assert done.exit_code == 3
    assert "exit code 3" in done.reason
    assert admin.logs(job.id).data == b"before\n"


def test_function_job_returns_its_value(controlplane: ControlPlane) -> None:
    @skyport.job(cpus=2, time="2m", home=controlplane.home)
    def square(x: int) -> int:
        return x * x

    handle = square.submit(7)
    assert handle.result(timeout=90) == 49
    assert handle.job().spec.kind == "function"


def test_function_job_that_raises_raises_job_failed(controlplane: ControlPlane) -> None:
    @skyport.job(cpus=1, time="2m", home=controlplane.home)
    def broken(x: int) -> int:
        raise KeyError(f"no {x}")

    handle = broken.submit(5)
    with pytest.raises(skyport.JobFailedError) as info:
        handle.result(timeout=90)
    assert info.value.remote_type == "KeyError"
    assert "no 5" in info.value.remote_message
    assert "in broken" in info.value.remote_traceback


def test_cancel_stops_a_running_job_and_its_processes(admin) -> None:
    job = admin.submit(build_spec("#!/bin/bash\n#SKYPORT --time=10m\nsleep 600\n"))
    deadline = time.monotonic() + 60
    while admin.job(job.id).state != JobState.RUNNING:
        assert time.monotonic() < deadline, admin.job(job.id)
        time.sleep(0.2)
    while not processes_of_job(job.id):  # RUNNING is posted just before the payload starts
        assert time.monotonic() < deadline, "the payload never started"
        time.sleep(0.1)
    cancelled = admin.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED
    deadline = time.monotonic() + 30
    while processes_of_job(job.id):
        assert time.monotonic() < deadline, "the job's processes outlived the cancel"
        time.sleep(0.2)
    assert admin.job(job.id).events[-1].reason == "cancelled by admin"


def test_jobs_that_do_not_fit_together_run_one_after_the_other(admin) -> None:
    # 6 of the gate's 8 cores each: they fit alone, not together
    spec = build_spec("#!/bin/bash\n#SKYPORT --cpus-per-node=6\nsleep 2\n")
    first, second = admin.submit(spec), admin.submit(spec)
    a, b = _wait(admin, first.id), _wait(admin, second.id)
    assert a.state == b.state == JobState.SUCCEEDED
    assert b.started_at >= a.ended_at or a.started_at >= b.ended_at


def test_impossible_request_is_rejected_at_submit_and_changes_nothing(admin) -> None:
    before = len(admin.jobs())
    spec = build_spec("#!/bin/bash\ntrue\n", cli_directives([("cpus-per-node", "64")]))
    with pytest.raises(ValidationError) as info:
        admin.submit(spec)
    assert "resources" in str(info.value) and "64" in str(info.value)
    with pytest.raises(ValidationError, match="gate"):
        admin.submit(build_spec("#!/bin/bash\n#SKYPORT --gate=mars\ntrue\n"))
    with pytest.raises(ValidationError, match="input"):
        admin.submit(build_spec("#!/bin/bash\n#SKYPORT --input=file:///no/such/file\ntrue\n"))
    assert len(admin.jobs()) == before


def test_users_see_and_touch_only_their_own_jobs(controlplane: ControlPlane) -> None:
    with (
        controlplane.client("alice") as alice,
        controlplane.client("bob") as bob,
        controlplane.client("admin") as admin,
    ):
        assert alice.whoami() == WhoAmI(username="alice", role="user")
        job = alice.submit(build_spec("#!/bin/bash\n#SKYPORT --name=alices\nsleep 1\n"))
        assert job.owner == "alice"
        with pytest.raises(NotFoundError):
            bob.job(job.id)
        with pytest.raises(NotFoundError):
            bob.cancel(job.id)
        with pytest.raises(NotFoundError):
            bob.download(job.id, "script.sh")
        assert job.id not in {j.id for j in bob.jobs()}
        with pytest.raises(PermissionDeniedError):
            bob.jobs(all=True)
        assert job.id in {j.id for j in admin.jobs(all=True)}
        assert admin.job(job.id).owner == "alice"
        assert alice.wait(job.id, timeout=90).state == JobState.SUCCEEDED


def test_requests_without_a_valid_certificate_are_refused(
    controlplane: ControlPlane, tmp_path: Path
) -> None:
    from skyport.api.tls import client_ssl_context

    url = controlplane.client().url
    ca = controlplane.state.pki / "ca.crt"
    with httpx.Client(verify=client_ssl_context(ca), timeout=10) as anonymous:
        r = anonymous.get(f"{url}/v1/jobs")
        assert r.status_code == 401
        assert r.json()["error"] == "AuthenticationError"
        # an agent call with a made-up token reaches nothing
        r = anonymous.post(
            f"{url}/agent/v1/jobs/nope/nodes/0/heartbeat",
            headers={"Authorization": "Bearer made-up"},
        )
        assert r.status_code in (403, 404)
    # a certificate from another CA fails the handshake
    from skyport import pki

    other = tmp_path / "other-pki"
    pki.init_ca(other)
    cert, key = pki.issue_user_cert(other, "admin", role="admin")
    with httpx.Client(verify=client_ssl_context(ca, cert, key), timeout=10) as stranger:
        with pytest.raises(httpx.HTTPError):
            stranger.get(f"{url}/v1/jobs").raise_for_status()


def test_skyport_gates_shows_each_gates_type_and_capacity(controlplane: ControlPlane) -> None:
    """On a real control plane (the gate actor's answer, not a test double's)."""
    from click.testing import CliRunner

    from skyport.cli import cli

    result = CliRunner().invoke(cli, ["--home", str(controlplane.home), "gates"])
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert header.split()[:2] == ["NAME", "TYPE"], header
    assert row.split()[:2] == ["local", "local"], row
    assert f"{LOCAL_CPUS}" in row  # its capacity
    with controlplane.client() as c:
        (gate,) = c.gates()
        assert (gate.type, gate.capacity.total_cpus if gate.capacity else None) == \
            ("local", LOCAL_CPUS)
