"""The ``skyport`` command against the real API and Core in this process (CliRunner, no server)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from skyport.cli import cli
from skyport.cli import jobs as jobs_module
from skyport.client.testing import TestControlPlane
from skyport.errors import ConflictError
from skyport.models import JobSpec

SCRIPT = "#!/bin/bash\n#SKYPORT --nodes=2 --cpus-per-node=4\n#SKYPORT --output=out.txt\necho hi\n"


class CliPlane(TestControlPlane):
    """A test control plane that the ``skyport`` command reaches (``client_factory``)."""

    factory_calls: list[tuple[Any, Any]]


def _plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> CliPlane:
    cp = CliPlane(tmp_path / "cp", **kwargs)
    cp.factory_calls = []

    def factory(home: Any, user: Any) -> Any:
        cp.factory_calls.append((home, user))
        return cp.client()

    monkeypatch.setattr("skyport.cli.app.client_factory", factory)
    monkeypatch.setattr(jobs_module, "FOLLOW_POLL_S", 0)
    monkeypatch.setattr(jobs_module, "FOLLOW_WAIT_S", 0.0)  # the pushed follow: its own test
    return cp


@pytest.fixture
def cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliPlane]:
    with _plane(tmp_path, monkeypatch) as cp:
        yield cp


@pytest.fixture
def one_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliPlane]:
    """A gate of one 1-core node: a second job waits for the first."""
    with _plane(tmp_path, monkeypatch, gate={"cpus": 1, "max_nodes": 1}) as cp:
        yield cp


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


def one_json(result: Result) -> Any:
    return json.loads(result.stdout)  # fails unless stdout is exactly one JSON document


def submitted(cp: TestControlPlane, **spec: Any) -> str:
    data = {"name": "train", "script": "echo"} | spec
    return cp.client().submit(JobSpec(**data)).id


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.sh"
    path.write_text(SCRIPT)
    return path


def test_submit_prints_the_id_and_cli_options_override(cp: CliPlane, script: Path) -> None:
    result = run(
        "submit",
        str(script),
        "--nodes",
        "3",
        "--time",
        "10m",
        "--env",
        "A=1",
        "--env",
        "B=2",
        "--output",
        "x",
        "--output",
        "y",
    )
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    spec = cp.store.get(job_id).spec
    assert spec.resources.nodes == 3 and spec.resources.cpus_per_node == 4
    assert spec.resources.time_limit_s == 600
    assert spec.env == {"A": "1", "B": "2"} and spec.outputs == ("x", "y")
    assert spec.script == SCRIPT


def test_submit_json_and_stdin(cp: CliPlane) -> None:
    result = run("submit", "-", "--json", "--name", "piped", input=SCRIPT)
    assert result.exit_code == 0
    doc = one_json(result)
    assert doc["name"] == "piped" and doc["state"] == "QUEUED" and doc["nodes"] == 2


def test_submit_bad_directive_is_one_line_error(cp: CliPlane, tmp_path: Path) -> None:
    path = tmp_path / "bad.sh"
    path.write_text("#!/bin/bash\n#SKYPORT --nodes=lots\necho\n")
    result = run("submit", str(path))
    assert result.exit_code == 1
    assert result.stderr == "error: line 2: invalid --nodes: 'lots' (a whole number)\n"
    assert result.stdout == "" and cp.store.list() == []
    path.write_text("#!/bin/bash\n#SKYPORT --nodes=2\necho\n")
    result = run("submit", str(path), "--cpus-per-node", "0")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid --cpus-per-node (command line): '0'")


def test_a_job_no_gate_can_run_is_refused_by_the_server(cp: CliPlane) -> None:
    result = run("submit", "-", "--cpus-per-node", "64", "--json", input="#!/bin/bash\necho\n")
    assert result.exit_code == 1
    doc = one_json(result)
    assert doc["error"] == "ValidationError" and doc["field"] == "resources"
    assert "no gate can ever run this" in doc["allowed"]


def test_json_error_is_one_document_too(cp: CliPlane) -> None:
    result = run("show", "nope", "--json")
    assert result.exit_code == 1
    assert one_json(result) == {"error": "NotFoundError", "message": "no job nope"}
    assert result.stderr == "error: no job nope\n"


def test_debug_lets_the_error_raise(cp: CliPlane) -> None:
    result = run("cancel", "nope", "--debug")
    assert result.exit_code == 1 and type(result.exception).__name__ == "NotFoundError"


def test_usage_error_is_exit_2(cp: CliPlane) -> None:
    assert run("submit").exit_code == 2
    assert run("jobs", "--state", "SLEEPING").exit_code == 2
    assert run("submit", "/no/such/file.sh").exit_code == 2


def test_jobs_limit_shows_the_newest_first_fetching_only_those(cp: CliPlane) -> None:
    ids = [submitted(cp, name=f"j{n}") for n in range(5)]
    before = len(cp.requests)
    result = run("jobs", "--limit", "2", "--json")
    assert result.exit_code == 0, result.output
    assert [j["id"] for j in one_json(result)] == [ids[4], ids[3]]
    listed = [r for r in cp.requests[before:] if r.url.path == "/v1/jobs"]
    assert len(listed) == 1  # one page of 2, not every job
    assert (listed[0].url.params["limit"], listed[0].url.params["order"]) == ("2", "newest")
    table = run("jobs", "--limit", "3").stdout.splitlines()
    assert [line.split()[0] for line in table[1:]] == [ids[4], ids[3], ids[2]]
    assert [j["id"] for j in one_json(run("jobs", "--json"))] == ids  # no limit: oldest first
    for bad in ("0", "-1", "x"):
        assert run("jobs", "--limit", bad).exit_code == 2


def test_jobs_table_and_filters(one_node: CliPlane) -> None:
    cp = one_node
    b = submitted(cp, name="other")
    cp.start(b)
    a = submitted(cp)  # waits for b's node
    cp.wait_planned(a)
    result = run("jobs")
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "OWNER",
        "STATE",
        "NODES",
        "SUBMITTED",
        "STARTED",
        "ETA/ELAPSED",
        "REASON",
    ]
    assert lines[1].split()[:4] == [b, "other", "admin", "RUNNING"]
    assert lines[2].split()[:5] == [a, "train", "admin", "QUEUED", "1"]
    # planned start ahead: an ETA, and why: b holds the only node's cores
    assert lines[2].split()[-3:-1][0] == "in" and lines[2].split()[-1] == "Resources"
    result = run("jobs", "--state", "running", "--json", "--all")
    assert [j["id"] for j in one_json(result)] == [b]
    assert cp.requests[-1].url.params["all"] == "true"
    assert run("jobs", "--state", "FAILED").stdout == "no jobs\n"


def test_show_fields_events_files(cp: CliPlane) -> None:
    job_id = submitted(cp)
    cp.start(job_id).write(files={"outputs/out.txt": b"x" * 2048})
    text = run("show", job_id).stdout
    assert f"id:            {job_id}" in text
    assert "events:" in text and "test: running" in text
    assert "outputs/out.txt  2.0 KiB" in text
    doc = one_json(run("show", job_id, "--json"))
    assert {"path": "outputs/out.txt", "size": 2048,
            "sha256": hashlib.sha256(b"x" * 2048).hexdigest()} in doc["files"]
    assert [e["state"] for e in doc["events"]] == [
        "QUEUED", "SCHEDULED", "PROVISIONING", "STAGING_IN", "RUNNING"]


def test_logs_and_follow(cp: CliPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = submitted(cp)
    agents = cp.start(job_id)
    agents.write(stdout=b"one\n", stderr=b"warn\n")
    assert run("logs", job_id).stdout == "one\n"
    assert run("logs", job_id, "--stderr").stdout == "warn\n"
    assert one_json(run("logs", job_id, "--json"))["text"] == "one\n"

    # -f: the job writes more and ends while we follow
    real = cp.client().logs
    calls = {"n": 0}

    def feeding_logs(self: Any, jid: str, stream: str = "stdout", offset: int = 0,
                     wait_s: float = 0.0) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            agents.write(stdout=b"two\n")
        if calls["n"] == 4:
            agents.write(stdout=b"three\n")
            agents.exit(0)
        return real.__func__(self, jid, stream, offset, wait_s)  # type: ignore[attr-defined]

    monkeypatch.setattr("skyport.client.core.Client.logs", feeding_logs)
    result = run("logs", job_id, "-f")
    assert result.exit_code == 0
    assert result.stdout == "one\ntwo\nthree\n"


def test_wait_exit_status(cp: CliPlane) -> None:
    ok, bad = submitted(cp), submitted(cp)
    cp.run(ok, 0)
    cp.run(bad, 1)
    result = run("wait", ok)
    assert result.exit_code == 0 and result.stdout.startswith(f"{ok} SUCCEEDED")
    result = run("wait", bad, "--json")
    assert result.exit_code == 1 and one_json(result)["state"] == "FAILED"


def test_wait_timeout_is_an_error(cp: CliPlane) -> None:
    job_id = submitted(cp)
    cp.agents(job_id)  # the cluster is up, no agent calls in: it stays PROVISIONING
    result = run("wait", job_id, "--timeout", "0.01")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: job {job_id} is still PROVISIONING after waiting")


def test_cancel(cp: CliPlane) -> None:
    job_id = submitted(cp)
    assert run("cancel", job_id).stdout == f"{job_id} CANCELLED\n"
    result = run("cancel", job_id)
    assert result.exit_code == 1
    assert result.stderr == f"error: job {job_id} is already CANCELLED\n"


def test_fetch_default_and_explicit_dest(
    cp: CliPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submitted(cp)
    cp.run(job_id, files={"outputs/a/b.txt": b"B"})
    monkeypatch.chdir(tmp_path)
    result = run("fetch", job_id)
    assert result.exit_code == 0
    assert (tmp_path / job_id / "outputs" / "a" / "b.txt").read_bytes() == b"B"
    doc = one_json(run("fetch", job_id, "elsewhere", "--json"))
    assert str(Path("elsewhere/outputs/a/b.txt")) in doc["files"]


def test_status_gates_whoami(cp: CliPlane) -> None:
    cp.agents(submitted(cp))
    text = run("status").stdout
    assert "policy:" in text and "fcfs" in text and "PROVISIONING=1" in text
    assert one_json(run("status", "--json"))["counts"] == {"PROVISIONING": 1}
    lines = run("gates").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "HEALTHY", "FLAVORS", "CAPACITY"]
    # the type and capacity come from the real Core's gate view (once '-' and blank)
    assert lines[1].split() == ["memory", "memory", "yes", "mem-4", "cpus", "28/32", "free"]
    (gate,) = one_json(run("gates", "--json"))
    assert gate["type"] == "memory" and gate["capacity"]["free_cpus"] == 28
    assert run("whoami").stdout == "admin (admin)\n"


def test_home_and_user_reach_the_client_factory(cp: CliPlane) -> None:
    run("--home", "/some/home", "--user", "alice", "status")
    assert cp.factory_calls[-1] == ("/some/home", "alice")


def test_timetable_text_json_and_picture(one_node: CliPlane, tmp_path: Path) -> None:
    cp = one_node
    first = submitted(cp, name="train")
    cp.start(first)
    second = submitted(cp, name="post")  # planned after the first, on the one node
    cp.wait_planned(second)
    text = run("timetable").stdout
    assert text.startswith("policy: fcfs\n")
    rows = text.splitlines()[1:3]
    assert rows[0].split()[:4] == [first, "train", "RUNNING", "█" * len(rows[0].split()[3])]
    assert "▒" in rows[1]
    # the queued job is marked with why it waits: the first one holds the node
    assert rows[1].startswith(f"{second} post [Resources]")
    # below the chart: each of your jobs' gate, flavor and estimated cost
    placed = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert "EST." in placed["JOB"] and placed[second][1:3] == ["QUEUED", "memory"]
    assert placed[second][3].startswith("mem-")
    assert "┴" in text
    out = tmp_path / "plan.png"
    result = run("timetable", "--output", str(out), "--json")
    assert result.exit_code == 0
    assert one_json(result)["picture"] == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = run("timetable", "--output", str(tmp_path / "plan.gif"))
    assert result.exit_code == 1 and "plan.gif" in result.stderr


def test_init_start_stop_call_the_control_plane(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import skyport.controlplane as cp

    calls: list[tuple[str, Any, dict[str, Any]]] = []

    def recorder(name: str, answer: dict[str, Any]) -> Any:
        def fn(state: Any, **kwargs: Any) -> dict[str, Any]:
            calls.append((name, state.root, kwargs))
            return answer

        return fn

    monkeypatch.setattr(cp, "init_state", recorder("init", {"home": str(tmp_path)}))
    monkeypatch.setattr(cp, "start", recorder("start", {"url": "https://127.0.0.1:1"}))
    monkeypatch.setattr(cp, "stop", recorder("stop", {"stopped": True}))
    home = str(tmp_path)
    result = run(
        "--home",
        home,
        "init",
        "--local-cpus",
        "4",
        "--local-gpus",
        "0,1",
        "--policy",
        "easy",
        "--port",
        "8443",
        "--force",
    )
    assert result.exit_code == 0 and f"home: {tmp_path}" in result.stdout
    assert calls[-1] == (
        "init",
        tmp_path.resolve(),
        {
            "force": True,
            "local_cpus": 4,
            "local_gpus": [0, 1],
            "storage": None,
            "port": 8443,
            "policy": "easy",
        },
    )
    assert one_json(run("--home", home, "start", "--json")) == {"url": "https://127.0.0.1:1"}
    assert calls[-1][2] == {"address": None, "foreground": False}
    assert run("--home", home, "stop").stdout == "stopped: yes\n"
    result = run("--home", home, "init", "--local-gpus", "a,b")
    assert result.exit_code == 1 and "--local-gpus" in result.stderr


def test_control_plane_error_from_init_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import skyport.controlplane as cp

    def refuse(state: Any, **kwargs: Any) -> None:
        raise ConflictError(f"{state.root} is already a Sky Port state directory")

    monkeypatch.setattr(cp, "init_state", refuse)
    result = run("--home", str(tmp_path), "init")
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path} is already a Sky Port state directory\n"


def test_user_add_issues_a_certificate(tmp_path: Path) -> None:
    from skyport.pki import init_ca

    init_ca(tmp_path / "pki")
    result = run("--home", str(tmp_path), "user", "add", "alice", "--json")
    assert result.exit_code == 0, result.output
    doc = one_json(result)
    assert doc["role"] == "user" and Path(doc["cert"]).is_file() and Path(doc["key"]).is_file()
    result = run("--home", str(tmp_path), "user", "add", "alice")
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert run("--home", str(tmp_path), "user", "add", "bob", "--admin").exit_code == 0
