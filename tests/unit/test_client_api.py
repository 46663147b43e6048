"""The REST client against the real API and Core in this process (no server, no TLS)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from skyport.client import Client, WaitTimeoutError, connect
from skyport.client.testing import TestControlPlane
from skyport.errors import (
    AuthenticationError,
    ConflictError,
    ControlPlaneError,
    NotFoundError,
    PermissionDeniedError,
    PkiError,
    ScriptError,
    SkyportError,
    ValidationError,
)
from skyport.models import JobSpec, JobState
from skyport.protocol import CapacityView, WhoAmI

SPEC = JobSpec(name="hello", script="#!/bin/bash\necho hi\n")


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp") as cp:
        yield cp


@pytest.fixture
def client(cp: TestControlPlane) -> Client:
    return cp.client()


def answering(status: int, **kwargs: object) -> Client:
    return Client(
        "https://x.test", transport=httpx.MockTransport(lambda r: httpx.Response(status, **kwargs))
    )


@pytest.mark.parametrize(
    "cls", [NotFoundError, ConflictError, AuthenticationError, ControlPlaneError, SkyportError]
)
def test_error_response_becomes_the_same_class(cls: type[SkyportError]) -> None:
    client = answering(cls.http_status, json={"error": cls.__name__, "message": "it broke"})
    with pytest.raises(cls) as info:
        client.whoami()
    assert type(info.value) is cls
    assert info.value.message == "it broke"


def test_validation_error_keeps_server_message() -> None:
    client = answering(422, json={"error": "ScriptError", "message": "line 3: invalid --nodes"})
    with pytest.raises(ScriptError, match="line 3: invalid --nodes"):
        client.submit(SPEC)


def test_error_without_json_body_maps_by_status() -> None:
    with pytest.raises(NotFoundError, match="HTTP 404: nothing here"):
        answering(404, text="nothing here").job("j1")
    with pytest.raises(SkyportError, match="HTTP 500"):
        answering(500, text="").status()


def test_unreachable_server_is_control_plane_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = Client("https://x.test", transport=httpx.MockTransport(refuse), home=Path("/h"))
    expected = r"no control plane running for /h \(run 'skyport start'\)"
    with pytest.raises(ControlPlaneError, match=expected):
        client.whoami()


def test_connect_without_running_control_plane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SKYPORT_URL", raising=False)
    with pytest.raises(ControlPlaneError) as info:
        connect(tmp_path)
    assert info.value.message == f"no control plane running for {tmp_path} (run 'skyport start')"


def test_connect_reads_address_and_needs_a_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("SKYPORT_URL", "SKYPORT_USER", "SKYPORT_CERT", "SKYPORT_KEY", "SKYPORT_CA"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "controlplane.json").write_text(json.dumps({"url": "https://h:1"}))
    with pytest.raises(PkiError, match="no certificate for user 'alice' at .*alice.crt"):
        connect(tmp_path, user="alice")
    monkeypatch.setenv("SKYPORT_USER", "bob")
    with pytest.raises(PkiError, match="user 'bob'"):
        connect(tmp_path)
    monkeypatch.setenv("SKYPORT_CERT", str(tmp_path / "elsewhere.crt"))
    with pytest.raises(PkiError, match="elsewhere.crt"):
        connect(tmp_path)


def test_connect_with_real_certificates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skyport.pki import init_ca, issue_user_cert

    for var in ("SKYPORT_URL", "SKYPORT_USER", "SKYPORT_CERT", "SKYPORT_KEY", "SKYPORT_CA"):
        monkeypatch.delenv(var, raising=False)
    init_ca(tmp_path / "pki")
    issue_user_cert(tmp_path / "pki", "admin", role="admin")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "controlplane.json").write_text(json.dumps({"url": "https://h:1/"}))
    with connect(tmp_path) as client:
        assert client.url == "https://h:1"
    monkeypatch.setenv("SKYPORT_URL", "https://other:2")
    with connect(tmp_path) as client:
        assert client.url == "https://other:2"


def test_submit_list_show_cancel(client: Client, cp: TestControlPlane) -> None:
    job = client.submit(SPEC)
    assert job.state is JobState.QUEUED and job.spec == SPEC
    assert json.loads(cp.requests[-1].content)["payload_b64"] is None
    other = client.submit(SPEC)
    cp.start(other.id)
    assert [j.id for j in client.jobs()] == [job.id, other.id]
    assert [j.id for j in client.jobs(states=["running"])] == [other.id]
    assert cp.requests[-1].url.params.get_list("state") == ["RUNNING"]
    client.jobs(all=True)
    assert cp.requests[-1].url.params["all"] == "true"
    assert client.job(job.id).events[0].reason == "submitted"
    assert client.cancel(job.id).state is JobState.CANCELLED
    with pytest.raises(ConflictError, match="already CANCELLED"):
        client.cancel(job.id)
    with pytest.raises(NotFoundError):
        client.job("nope")


def test_a_user_sees_only_their_own_jobs(cp: TestControlPlane) -> None:
    alice, bob = cp.client("alice"), cp.client("bob")
    job = alice.submit(SPEC)
    assert [j.owner for j in alice.jobs()] == ["alice"] and bob.jobs() == []
    with pytest.raises(NotFoundError):
        bob.job(job.id)
    with pytest.raises(PermissionDeniedError, match="only an admin"):
        bob.jobs(all=True)
    assert [j.id for j in cp.client().jobs(all=True)] == [job.id]


def test_bad_arguments_are_refused_before_any_request(
    client: Client, cp: TestControlPlane
) -> None:
    with pytest.raises(ValidationError, match="state"):
        client.jobs(states=["SLEEPING"])
    with pytest.raises(ValidationError, match="job id"):
        client.job("../etc")
    with pytest.raises(ValidationError, match="stream"):
        client.logs("j1", "stdlog")
    with pytest.raises(ValidationError, match="path"):
        client.download("j1", "../other/secret")
    assert cp.requests == []


def test_a_server_side_validation_error_keeps_its_fields(client: Client) -> None:
    with pytest.raises(ValidationError) as info:
        client.submit(SPEC.model_copy(update={"gate": "nowhere"}))
    assert (info.value.field, info.value.value, info.value.allowed) == (
        "gate", "nowhere", "one of: memory")


def test_logs_with_offsets(client: Client, cp: TestControlPlane) -> None:
    job = client.submit(SPEC)
    cp.agents(job.id).write(stdout=b"hello\nworld\n")
    chunk = client.logs(job.id, "stdout", 6)
    assert chunk == (b"world\n", 12, JobState.PROVISIONING)
    assert client.logs(job.id, "stderr").data == b""


def test_files_download_and_fetch(client: Client, cp: TestControlPlane, tmp_path: Path) -> None:
    job = client.submit(SPEC)
    cp.run(job.id, stdout=b"log", files={"outputs/sub dir/a.txt": b"A"})
    assert [(f.path, f.size) for f in client.files(job.id)] == [
        ("logs/stdout", 3),
        ("outputs/sub dir/a.txt", 1),
        ("script.sh", len(SPEC.script)),
    ]
    assert client.download(job.id, "outputs/sub dir/a.txt") == b"A"
    written = client.fetch(job.id, tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in written) == [
        "logs/stdout",
        "outputs/sub dir/a.txt",
        "script.sh",
    ]
    assert (tmp_path / "dest" / "outputs" / "sub dir" / "a.txt").read_bytes() == b"A"


def test_fetch_refuses_a_path_that_escapes_dest(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"path": "../../evil", "size": 1}])

    client = Client("https://x.test", transport=httpx.MockTransport(handler))
    with pytest.raises(ValidationError, match="evil"):
        client.fetch("j1", tmp_path / "dest")
    assert not (tmp_path / "evil").exists()


def until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Until ``condition()`` holds (a hang guard, not a speed bound)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def test_wait_returns_the_terminal_job(client: Client, cp: TestControlPlane) -> None:
    job = client.submit(SPEC)

    def run_once_waited_on() -> None:  # the job ends while wait() is held by the server
        until(lambda: cp.service.waiters.waiting == 1)
        cp.run(job.id)

    runner = threading.Thread(target=run_once_waited_on)
    runner.start()
    done = client.wait(job.id)
    runner.join()
    assert done.state is JobState.SUCCEEDED
    assert [e.state for e in done.events][-3:] == [
        JobState.RUNNING,
        JobState.STAGING_OUT,
        JobState.SUCCEEDED,
    ]


def test_wait_times_out(client: Client, cp: TestControlPlane) -> None:
    job = client.submit(SPEC)
    cp.agents(job.id)  # its cluster is up; no agent calls in, so it stays PROVISIONING
    with pytest.raises(WaitTimeoutError, match=f"job {job.id} is still PROVISIONING after"):
        client.wait(job.id, timeout=0.05, poll_s=0.01)


def test_status_gates_timetable_whoami_clusters(client: Client, cp: TestControlPlane) -> None:
    job = client.submit(SPEC)
    cp.agents(job.id)
    assert client.status().counts == {"PROVISIONING": 1}
    (gate,) = client.gates()
    assert (gate.name, gate.type, gate.healthy) == ("memory", "memory", True)
    assert gate.capacity == CapacityView(total_cpus=32, free_cpus=28)  # one 4-core node taken
    assert gate.flavors[0].cpus == 4 and gate.clusters == 1
    assert client.timetable().policy == "fcfs"
    assert [e.job_id for e in client.timetable().entries] == [job.id]
    assert client.whoami() == WhoAmI(username="admin", role="admin")
    (cluster,) = client.clusters()
    assert (cluster.job_id, cluster.gate, cluster.owner) == (job.id, "memory", "admin")
    assert cp.client("bob").clusters() == []
