"""The agent against a fake control plane that speaks PROTOCOL.md (httpx MockTransport)."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from skyport.agent.bootstrap import Bootstrap
from skyport.agent.client import AgentClient
from skyport.agent.main import Agent, AgentSettings
from skyport.core.launches import LaunchRegistry
from skyport.errors import ConflictError, ControlPlaneError
from skyport.models import Job, JobSpec, JobState
from skyport.protocol import HelloAnswer

pytestmark = pytest.mark.timeout(60)
PREFIX = "/agent/v1/jobs/j1"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}


class FakeControlPlane:
    def __init__(self, spec: JobSpec, num_nodes: int = 1, inputs: dict[str, bytes] | None = None,
                 flaky: int = 0) -> None:
        self.spec = spec
        self.num_nodes = num_nodes
        self.state = "STAGING_IN"
        self.hellos: set[int] = set()
        self.files = {"script.sh": spec.script.encode()}
        self.files.update({f"inputs/{k}": v for k, v in (inputs or {}).items()})
        self.logs: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.states: list[str] = []
        self.notes: list[str] = []  # progress: the current state again, with a reason
        self.exit: dict[str, Any] | None = None
        self.flaky = flaky  # the first N requests fail to connect
        self.lock = threading.Lock()
        self.launches = LaunchRegistry()

    def job(self) -> Job:
        """The job as the real API answers it (``skyport.protocol``)."""
        return Job(id="j1", owner="alice", spec=self.spec, state=JobState(self.state),
                   submitted_at=datetime.now(UTC))

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if self.flaky:
                self.flaky -= 1
                raise httpx.ConnectError("connection refused", request=request)
            assert request.headers["authorization"] == "Bearer tok"
            path = request.url.path.removeprefix(PREFIX)
            parts = path.strip("/").split("/")
            body = request.read()
            if parts[0] == "nodes" and parts[2] == "hello":
                self.hellos.add(int(parts[1]))
                return httpx.Response(200, json=HelloAnswer(
                    job=self.job(), num_nodes=self.num_nodes).model_dump(mode="json"))
            if parts[0] == "nodes" and parts[2] == "heartbeat":
                action = "stop" if self.state in TERMINAL else (
                    "run" if len(self.hellos) == self.num_nodes else "wait")
                return httpx.Response(200, json={"state": self.state, "action": action})
            if path == "/state":
                said = json.loads(body)
                if said["state"] == self.state:
                    self.notes.append(said["reason"])
                else:
                    self.state = said["state"]
                    self.states.append(self.state)
                return httpx.Response(200, json=self.job().summary())
            if path == "/exit":
                if self.state in TERMINAL:
                    return httpx.Response(409, json={"error": "ConflictError",
                                                     "message": "job is terminal"})
                self.exit = json.loads(body)
                self.state = "TIMEOUT" if self.exit["timed_out"] else (
                    "SUCCEEDED" if self.exit["exit_code"] == 0 else "FAILED")
                return httpx.Response(200, json=self.job().summary())
            if path == "/inputs":
                return httpx.Response(200, json=[k for k in self.files if k.startswith("in")])
            if path == "/files":
                return httpx.Response(200, json=[{"path": k, "size": len(v)}
                                                 for k, v in self.files.items()])
            if path == "/checkpoints":  # no checkpoint yet: nothing to restore
                return httpx.Response(200, json={"latest": None, "pending": None,
                                                 "log_sizes": {}})
            if parts[0] == "files":
                name = "/".join(parts[1:])
                if request.method == "PUT":
                    self.files[name] = body
                    return httpx.Response(200, json={"size": len(body)})
                if name not in self.files:
                    return httpx.Response(404, json={"error": "NotFoundError",
                                                     "message": f"no {name}"})
                return httpx.Response(200, content=self.files[name])
            if parts[0] == "direct":  # file:// storage: no presigned URLs, stream via /files
                return httpx.Response(200, json={"url": None} if parts[1] == "read"
                                      else {"urls": []})
            if parts[0] == "launches" or path.endswith("/launches"):
                return self._launch(request, parts, body)
            if parts[0] == "logs":
                offset = int(request.url.params["offset"])
                log = self.logs[parts[1]]
                assert offset <= len(log)
                log[offset:offset + len(body)] = body
                return httpx.Response(200, json={"size": len(log)})
            return httpx.Response(404, json={"error": "NotFoundError", "message": path})


    def _launch(self, request: httpx.Request, parts: list[str], body: bytes) -> httpx.Response:
        """The launch calls over the real registry (node 0 asks node k to stage in/out)."""
        reg, q = self.launches, request.url.params
        if parts[0] == "nodes":  # node k's poll: what to start (no long-poll here)
            claimed = reg.claim("j1", int(parts[1]))
            if not claimed["start"] and not claimed["cancel"]:
                time.sleep(0.02)
            stop = self.state in TERMINAL
            return httpx.Response(200, json={**claimed, "stop": stop})
        if len(parts) == 1:
            b = json.loads(body)
            made = reg.create("j1", b["node"], self.num_nodes, b["argv"], b.get("env", {}),
                              b.get("cwd", ""), b.get("op", "run"))
            return httpx.Response(201, json={"launch_id": made.id})
        launch_id = parts[1]
        if parts[-2:-1] == ["output"]:
            size = reg.append("j1", launch_id, int(q["node"]), parts[-1], int(q["offset"]),
                              body)
            return httpx.Response(200, json={"size": size})
        if parts[-1] == "exit":
            b = json.loads(body)
            reg.finish("j1", launch_id, b["node"], b["exit_code"])
            return httpx.Response(200, json={})
        if parts[-1] == "cancel":
            reg.cancel("j1", launch_id)
            return httpx.Response(200, json={})
        got = reg.read("j1", launch_id, {s: int(q.get(s, 0)) for s in ("stdout", "stderr")})
        if got["exit_code"] is None:
            time.sleep(0.02)
        return httpx.Response(200, json={**got, "stdout": base64.b64encode(got["stdout"])
                                         .decode(), "stderr": base64.b64encode(got["stderr"])
                                         .decode()})


def make_agent(tmp_path: Path, cp: FakeControlPlane, rank: int = 0,
               gpus: tuple[str, ...] = ()) -> Agent:
    workdir = tmp_path / f"n{rank}"
    workdir.mkdir()
    boot = Bootstrap(control_url="https://cp.invalid", ca_pem="", token="tok", job_id="j1",
                     cluster_id="c1", node_rank=rank, node_name=f"c1-n{rank}",
                     num_nodes=cp.num_nodes, workdir=str(workdir), cpus_per_node=2,
                     gpus=gpus)
    client = AgentClient(boot.control_url, "j1", "tok", transport=httpx.MockTransport(cp.handle),
                         backoff_s=0.01, retry_for_s=5)
    return Agent(boot, client, AgentSettings(heartbeat_s=0.05, grace_s=0.5,
                                             log_interval_s=0.05))


def spec(script: str, **kw: Any) -> JobSpec:
    return JobSpec(script=script, **kw)


def test_node0_runs_the_job_end_to_end(tmp_path: Path) -> None:
    cp = FakeControlPlane(spec(
        "cat data/in.txt > result.txt\nmkdir -p res && echo x > res/a\n"
        "echo \"$SKYPORT_NODE_RANK $SKYPORT_NUM_NODES $OMP_NUM_THREADS "
        "[$CUDA_VISIBLE_DEVICES] $MYVAR $SKYPORT_CPUS_PER_NODE\"\necho oops >&2\nexit 3\n",
        outputs=("result.txt", "res", "missing.txt"), env={"MYVAR": "v"},
        resources={"cpus_per_node": 2}, layout={"ranks_per_node": 1}),
        inputs={"data/in.txt": b"input bytes"}, flaky=2)
    agent = make_agent(tmp_path, cp, gpus=("1", "3"))
    assert agent.run() == 0
    assert cp.states == ["RUNNING", "STAGING_OUT"]
    assert cp.exit is not None and cp.exit["exit_code"] == 3 and not cp.exit["timed_out"]
    assert "missing outputs: missing.txt" in cp.exit["reason"]
    assert cp.exit["output_problems"] == ["missing outputs: missing.txt"]
    assert cp.notes == ["staged in 11 B of 11 B", "staged out 13 B of 13 B"]
    assert cp.files["outputs/result.txt"] == b"input bytes"
    assert cp.files["outputs/res/a"] == b"x\n"
    assert bytes(cp.logs["stdout"]) == b"0 1 2 [1,3] v 2\n"
    assert bytes(cp.logs["stderr"]) == b"oops\n"


@pytest.mark.parametrize("output_node", ["all", "0"])
def test_every_node_stages_in_and_node_k_outputs_come_back_under_nodes_k(
        tmp_path: Path, output_node: str) -> None:
    cp = FakeControlPlane(spec("cat in.txt > o.txt\n", outputs=("o.txt", "only-k.txt"),
                               output_node=output_node), num_nodes=2,
                          inputs={"in.txt": b"data"})
    node0, node1 = make_agent(tmp_path, cp, rank=0), make_agent(tmp_path, cp, rank=1)
    # what a rank on node 1 would have written there (the script runs on node 0)
    (tmp_path / "n1" / "only-k.txt").write_text("from node 1")
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda a=a, r=r: results.__setitem__(r, a.run()))
               for r, a in ((0, node0), (1, node1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {0: 0, 1: 0}
    assert (tmp_path / "n1" / "in.txt").read_bytes() == b"data"  # staged to node 1 too
    assert (tmp_path / "n1" / "script.sh").exists()
    assert cp.files["outputs/o.txt"] == b"data"
    assert cp.exit is not None
    if output_node == "all":
        assert cp.files["outputs/nodes/1/only-k.txt"] == b"from node 1"
        assert "outputs/nodes/1/o.txt" not in cp.files  # node 1 has none: no problem
        assert cp.exit["output_problems"] == ["missing outputs: only-k.txt"]  # node 0's
    else:
        assert not any(k.startswith("outputs/nodes/") for k in cp.files)


def test_node0_waits_for_every_node_and_reports_a_timeout(tmp_path: Path) -> None:
    cp = FakeControlPlane(spec("trap '' TERM\nsleep 60\n",
                               resources={"time_limit_s": 1}), num_nodes=2)
    node0 = make_agent(tmp_path, cp, rank=0)
    node1 = make_agent(tmp_path, cp, rank=1)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda a=a, r=r: results.__setitem__(r, a.run()))
               for r, a in ((0, node0), (1, node1))]
    threads[0].start()
    time.sleep(0.3)
    assert cp.states == []  # node 1 has not said hello yet
    threads[1].start()
    for t in threads:
        t.join(timeout=30)
    assert results == {0: 0, 1: 0}
    assert cp.exit is not None and cp.exit["timed_out"] and cp.exit["exit_code"] == 137
    assert cp.states == ["RUNNING"]


def test_stop_from_the_heartbeat_kills_the_payload(tmp_path: Path) -> None:
    cp = FakeControlPlane(spec("echo $$ > pid\nsleep 60\n"))
    agent = make_agent(tmp_path, cp)
    t = threading.Thread(target=agent.run)
    t.start()
    pid_file = tmp_path / "n0" / "pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cp.state = "CANCELLED"
    t.join(timeout=10)
    assert not t.is_alive() and cp.exit is None
    assert not Path(f"/proc/{int(pid_file.read_text())}").exists()


def test_a_missing_script_is_reported_as_a_staging_failure(tmp_path: Path) -> None:
    cp = FakeControlPlane(spec("exit 0\n"))
    del cp.files["script.sh"]
    assert make_agent(tmp_path, cp).run() == 1
    assert cp.exit is not None and "staging in failed" in cp.exit["reason"]
    assert cp.states == []


def test_client_maps_errors_and_gives_up_after_retry_for_s() -> None:
    now = [0.0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/exit"):
            return httpx.Response(409, json={"error": "ConflictError", "message": "terminal"})
        raise httpx.ConnectError("refused", request=request)

    def sleep(s: float) -> None:
        now[0] += s

    client = AgentClient("https://cp.invalid", "j1", "tok", transport=httpx.MockTransport(handler),
                         retry_for_s=600, sleep=sleep, clock=lambda: now[0])
    with pytest.raises(ConflictError, match="terminal"):
        client.exit(0)
    with pytest.raises(ControlPlaneError, match="unreachable for 600s"):
        client.heartbeat(0)
    assert 540 <= now[0] <= 600  # it kept trying for (about) the whole window
