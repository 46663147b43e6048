"""End to end: a real JupyterHub spawns a notebook server as a Sky Port job, through the relay.

A hub (dummy authenticator) and its proxy (the Python port of
configurable-http-proxy) run on loopback as subprocesses from a generated
config, against the shared control plane with the local gate.  The test spawns
through the hub's REST API with ``user_options``, follows the progress stream,
reaches the server and a kernel through hub -> proxy -> forwarder -> control
plane -> agent, restarts the hub, and stops the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("jupyterhub", reason="the jupyter extra is not installed "
                                          "(pip install -e '.[jupyter]'; make test does)")

from websockets.sync.client import connect as ws_connect  # noqa: E402

from skyport.models import JobState  # noqa: E402

from .conftest import processes_of_job  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

TOKEN = uuid.uuid4().hex
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hub:
    def __init__(self, root: Path, home: Path, extra: str = "") -> None:
        self.root = root
        self.port, self.hub_port, self.api_port = _free_port(), _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / "jupyterhub_config.py"
        config.write_text(f"""
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.JupyterHub.db_url = "sqlite:///{root}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/cookie_secret"
c.JupyterHub.pid_file = "{root}/hub.pid"
c.JupyterHub.cleanup_servers = False  # a restarted hub finds its servers again
c.JupyterHub.last_activity_interval = 5
# the spawn request answers 202 at once, so the progress stream is read from the start
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0.1}}
c.ConfigurableHTTPProxy.command = ["{BIN}/configurable-http-proxy"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.auth_token = "{uuid.uuid4().hex}"
c.ConfigurableHTTPProxy.pid_file = "{root}/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "skyport"
c.SkyPortSpawner.home = "{home}"
c.SkyPortSpawner.skyport_user = "alice"
c.Spawner.environment = {{"JUPYTERHUB_ACTIVITY_INTERVAL": "5"}}
c.Spawner.http_timeout = 120
c.JupyterHub.services = [{{"name": "tester", "api_token": "{TOKEN}"}}]
c.JupyterHub.load_roles = [{{
    "name": "tester",
    "scopes": ["admin:users", "admin:servers", "access:servers", "read:users",
               "read:servers"],
    "services": ["tester"],
}}]
""" + extra)
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"hub-{self.starts}.log", "wb")  # noqa: SIM115
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        self.proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", str(self.config)],
                                     cwd=self.root, stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(httpx.HTTPError):
                if self.api("GET", "/").status_code == 200:
                    return
            time.sleep(0.5)
        raise AssertionError("the hub did not start:\n" + self.log())

    def configure(self, text: str) -> None:
        """More config, read at the next start."""
        with self.config.open("a") as f:
            f.write("\n" + text + "\n")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return (self.root / f"hub-{self.starts}.log").read_text(errors="replace")[-4000:]

    def api(self, method: str, path: str, **kw: object) -> httpx.Response:
        return httpx.request(method, f"{self.url}/hub/api{path}", timeout=60,
                             headers={"Authorization": f"token {TOKEN}"}, **kw)  # type: ignore[arg-type]

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60,
                         headers={"Authorization": f"token {TOKEN}"})


def _hub(controlplane, tmp_path: Path, extra: str = "") -> Iterator[Hub]:
    h = Hub(tmp_path, controlplane.home, extra)
    h.start()
    yield h
    h.stop()
    # whatever the test left: the job, its forwarder (by the pid it wrote), the proxy
    with controlplane.client("alice") as alice:
        for job in alice.jobs():
            if job.name.startswith("jupyter-alice") and not job.state.is_terminal():
                alice.cancel(job.id)
            ready = Path(f"/tmp/skyport-jupyter-{os.getuid()}/{job.id}.json")
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.kill(int(json.loads(ready.read_text())["pid"]), signal.SIGTERM)
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((tmp_path / "proxy.pid").read_text()), signal.SIGTERM)


@pytest.fixture
def hub(controlplane, tmp_path: Path) -> Iterator[Hub]:
    yield from _hub(controlplane, tmp_path)


@pytest.fixture
def gpu_plane(fresh_controlplane):
    """A control plane whose local gate declares a GPU (none is needed to run the server)."""
    cp = fresh_controlplane(local_gpus=[0])
    cp.add_user("alice")
    return cp


@pytest.fixture
def named_hub(gpu_plane, tmp_path: Path) -> Iterator[Hub]:
    yield from _hub(gpu_plane, tmp_path, "c.JupyterHub.allow_named_servers = True\n")


def _progress(hub: Hub) -> list[dict]:
    events = []
    with httpx.stream("GET", f"{hub.url}/hub/api/users/alice/server/progress", timeout=600,
                      headers={"Authorization": f"token {TOKEN}"}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line[5:])
                events.append(event)
                if event.get("ready") or event.get("failed"):
                    break
    return events


def _execute(hub: Hub, code: str) -> str:
    kernel = hub.get("/user/alice/api/kernels")  # warm the route
    assert kernel.status_code == 200, kernel.text
    made = httpx.post(f"{hub.url}/user/alice/api/kernels", json={"name": "python3"},
                      headers={"Authorization": f"token {TOKEN}"}, timeout=120)
    assert made.status_code == 201, made.text
    kid = made.json()["id"]
    msg_id = uuid.uuid4().hex
    request = {
        "header": {"msg_id": msg_id, "username": "alice", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }
    url = f"ws://127.0.0.1:{hub.port}/user/alice/api/kernels/{kid}/channels"
    with ws_connect(url, additional_headers={"Authorization": f"token {TOKEN}"},
                    open_timeout=60) as ws:
        ws.send(json.dumps(request))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv(timeout=120))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                return str(msg["content"]["data"]["text/plain"])
            if msg["msg_type"] == "error":
                raise AssertionError(msg["content"])
    raise AssertionError("no execute_result")


def _server(hub: Hub) -> dict:
    user = hub.api("GET", "/users/alice").json()
    return user.get("servers", {}).get("", {})


def test_a_hub_spawns_reaches_keeps_and_stops_a_server_through_the_relay(
        hub: Hub, controlplane) -> None:
    assert hub.api("POST", "/users/alice").status_code in (201, 409)
    # a bad choice is refused at once with Sky Port's one line, and nothing is submitted
    bad = hub.api("POST", "/users/alice/server", json={"cpus": "many"})
    assert bad.status_code == 400 and "cpus" in bad.text, bad.text
    alice = controlplane.client("alice")
    assert not [j for j in alice.jobs() if j.name.startswith("jupyter-alice")
                and not j.state.is_terminal()]

    started = hub.api("POST", "/users/alice/server",
                      json={"cpus": 1, "time": "00:30:00", "gate": "local"})
    assert started.status_code in (201, 202), started.text
    events = _progress(hub)
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("ready"), (messages, hub.log())
    for step in ("queued", "cluster being created", "node up", "server starting"):
        assert any(m.startswith(step) for m in messages), (step, messages)

    [job] = [j for j in alice.jobs() if j.name == "jupyter-alice" and not j.state.is_terminal()]
    assert alice.job(job.id).state == JobState.RUNNING
    status = hub.get("/user/alice/api/status")
    assert status.status_code == 200, status.text
    assert _execute(hub, "6 * 7") == "42"

    # the hub's token reached the server, and no script, event, log or stored file
    pids = processes_of_job(job.id)
    tokens = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"JUPYTERHUB_API_TOKEN="):
                    tokens.add(item.split(b"=", 1)[1].decode())
    assert tokens, "no server process with the hub's token"
    seen = alice.job(job.id).model_dump_json() + alice.logs(job.id).data.decode() \
        + alice.logs(job.id, "stderr").data.decode()
    stored = b"".join(p.read_bytes() for p in (controlplane.home / "storage").rglob("*")
                      if p.is_file() and job.id in str(p))
    for token in tokens:
        assert token not in seen and token.encode() not in stored

    # activity reaches the hub through the reverse stream
    before = _server(hub)["last_activity"]
    deadline = time.monotonic() + 120
    while _server(hub)["last_activity"] == before:
        assert time.monotonic() < deadline, "last_activity did not advance"
        hub.get("/user/alice/api/status")
        time.sleep(2)

    # a restarted hub finds the server again, still reachable
    forwarder = json.loads(Path(f"/tmp/skyport-jupyter-{os.getuid()}/{job.id}.json")
                           .read_text())["pid"]
    hub.stop()
    hub.start()
    deadline = time.monotonic() + 120
    while hub.get("/user/alice/api/status").status_code != 200:
        assert time.monotonic() < deadline, hub.log()
        time.sleep(1)
    assert _execute(hub, "sum(range(10))") == "45"
    assert alice.job(job.id).state == JobState.RUNNING

    # stop: the job is cancelled, its cluster deleted, the forward closed, nothing left
    stopped = hub.api("DELETE", "/users/alice/server")
    assert stopped.status_code in (202, 204), stopped.text
    deadline = time.monotonic() + 120
    while _server(hub):
        assert time.monotonic() < deadline, hub.log()
        time.sleep(1)
    assert alice.wait(job.id, timeout=120).state == JobState.CANCELLED
    for _ in range(120):
        if not processes_of_job(job.id) and not Path(f"/proc/{forwarder}").exists() \
                and not [c for c in alice.clusters() if c.job_id == job.id]:
            break
        time.sleep(0.5)
    assert processes_of_job(job.id) == []
    assert not Path(f"/proc/{forwarder}").exists() or \
        b"forward" not in Path(f"/proc/{forwarder}/cmdline").read_bytes()
    assert [c for c in alice.clusters() if c.job_id == job.id] == []
    alice.close()


CULLER = f"""
c.JupyterHub.services = c.JupyterHub.services + [{{
    "name": "idle-culler",
    "command": ["{sys.executable}", "-m", "jupyterhub_idle_culler", "--timeout=20",
                "--cull-every=5"],
}}]
c.JupyterHub.load_roles = c.JupyterHub.load_roles + [{{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}}]
"""


def _named(hub: Hub, name: str) -> dict:
    return hub.api("GET", "/users/alice").json().get("servers", {}).get(name, {})


def _until(what: str, check, hub: Hub, timeout: float = 300) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}:\n{hub.log()}"
        time.sleep(1)


def _gone(alice, job_id: str) -> None:  # noqa: ANN001
    """The job is CANCELLED, its cluster deleted, its forward closed, no process left."""
    assert alice.wait(job_id, timeout=120).state == JobState.CANCELLED
    ready = Path(f"/tmp/skyport-jupyter-{os.getuid()}/{job_id}.json")
    forwarder = json.loads(ready.read_text())["pid"] if ready.exists() else 0

    def forwarding() -> bool:
        with contextlib.suppress(OSError):
            return b"forward" in Path(f"/proc/{forwarder}/cmdline").read_bytes()
        return False

    for _ in range(240):
        if not processes_of_job(job_id) and not forwarding() \
                and not [c for c in alice.clusters() if c.job_id == job_id]:
            break
        time.sleep(0.5)
    assert processes_of_job(job_id) == [] and not forwarding()
    assert [c for c in alice.clusters() if c.job_id == job_id] == []


def test_named_cpu_and_gpu_servers_run_side_by_side_and_the_idle_culler_ends_them(
        named_hub: Hub, gpu_plane) -> None:
    hub = named_hub
    assert hub.api("POST", "/users/alice").status_code in (201, 409)
    for name, options in (("cpu", {"cpus": 1, "gate": "local"}),
                          ("gpu", {"cpus": 1, "gpus": 1, "gate": "local"})):
        started = hub.api("POST", f"/users/alice/servers/{name}",
                          json={**options, "time": "00:30:00"})
        assert started.status_code in (201, 202), started.text
    _until("the two servers are ready",
           lambda: _named(hub, "cpu").get("ready") and _named(hub, "gpu").get("ready"), hub)

    alice = gpu_plane.client("alice")
    jobs = {j.name: j for j in alice.jobs() if not j.state.is_terminal()}
    cpu, gpu = jobs["jupyter-alice-cpu"], jobs["jupyter-alice-gpu"]
    assert (cpu.spec.resources.gpus_per_node, gpu.spec.resources.gpus_per_node) == (0, 1)
    for name in ("cpu", "gpu"):  # each its own job, reached through its own forward
        status = hub.get(f"/user/alice/{name}/api/status")
        assert status.status_code == 200, status.text
    ready = Path(f"/tmp/skyport-jupyter-{os.getuid()}")
    pids = {json.loads((ready / f"{j.id}.json").read_text())["pid"] for j in (cpu, gpu)}
    assert len(pids) == 2

    # stopping one leaves the other
    assert hub.api("DELETE", "/users/alice/servers/gpu").status_code in (202, 204)
    _until("the GPU server stopped", lambda: not _named(hub, "gpu").get("ready"), hub)
    _gone(alice, gpu.id)
    assert alice.job(cpu.id).state == JobState.RUNNING
    status = hub.get("/user/alice/cpu/api/status")
    assert status.status_code == 200, status.text

    # the idle culler, a hub service, stops the idle one: its job ends, its cluster goes
    hub.stop()
    hub.configure(CULLER)
    hub.start()
    _until("the restarted hub reaches the server again",
           lambda: hub.get("/user/alice/cpu/api/status").status_code == 200, hub)
    _until("the culler stopped the idle server", lambda: not _named(hub, "cpu").get("ready"),
           hub)
    _gone(alice, cpu.id)
    alice.close()


def _end_cli(proc: subprocess.Popen, cp) -> None:  # noqa: ANN001
    """A test's last word on ``skyport jupyter``: its process and, had the test failed
    before Ctrl-C, the job it left (else it would hold its cores for the rest of the run)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with cp.client("alice") as alice:
        for job in alice.jobs():
            if job.name == "jupyter" and not job.state.is_terminal():
                alice.cancel(job.id)


def test_skyport_jupyter_serves_one_users_notebook_through_the_relay(controlplane) -> None:
    cmd = [sys.executable, "-m", "skyport", "--home", str(controlplane.home), "--user", "alice",
           "jupyter", "--cpus", "1", "--time", "00:10:00", "--gate", "local"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        assert line.startswith("http://127.0.0.1:"), (line, proc.stderr.read(2000))  # type: ignore[union-attr]
        base, _, token = line.partition("/?token=")
        status = httpx.get(f"{base}/api/status", headers={"Authorization": f"token {token}"},
                           timeout=60)
        assert status.status_code == 200, status.text
        refused = httpx.get(f"{base}/api/status", timeout=60)  # the token is needed
        assert refused.status_code == 403
        with controlplane.client("alice") as alice:
            [job] = [j for j in alice.jobs() if j.name == "jupyter"
                     and not j.state.is_terminal()]
            assert token not in alice.job(job.id).model_dump_json()
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: the forward ends, the job is cancelled
            proc.wait(60)
            assert alice.wait(job.id, timeout=120).state == JobState.CANCELLED
            for _ in range(120):
                if not processes_of_job(job.id):
                    break
                time.sleep(0.5)
            assert processes_of_job(job.id) == []
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{base}/api/status", timeout=10)
    finally:
        _end_cli(proc, controlplane)


def _run_cell(base: str, token: str, code: str) -> str:
    """Run ``code`` in a new kernel of the server at ``base``; its stdout (stream output)."""
    headers = {"Authorization": f"token {token}"}
    kid = httpx.post(f"{base}/api/kernels", headers=headers, json={"name": "python3"},
                     timeout=120).json()["id"]
    msg_id, out = uuid.uuid4().hex, []
    request = {
        "header": {"msg_id": msg_id, "username": "alice", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }
    ws_base = base.replace("http://", "ws://")
    with ws_connect(f"{ws_base}/api/kernels/{kid}/channels", additional_headers=headers,
                    open_timeout=60) as ws:
        ws.send(json.dumps(request))
        while True:
            msg = json.loads(ws.recv(timeout=180))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise AssertionError(msg["content"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)


def test_the_example_notebook_runs_mpi_across_both_nodes_of_its_server(controlplane) -> None:
    cell = json.loads((Path(__file__).parents[2] / "examples/jupyter/mpi.ipynb").read_text())
    code = "".join(next(c["source"] for c in cell["cells"] if c["cell_type"] == "code"))
    cmd = [sys.executable, "-m", "skyport", "--home", str(controlplane.home), "--user", "alice",
           "jupyter", "--nodes", "2", "--cpus", "1", "--time", "00:10:00", "--gate", "local"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        assert line.startswith("http://"), proc.stderr.read(2000)  # type: ignore[union-attr]
        base, _, token = line.partition("/?token=")
        out = _run_cell(base, token, code)
        assert "ranks 2" in out, out
        nodes = out.split("nodes ", 1)[1]
        assert nodes.count("'") == 4, out  # two distinct node names
    finally:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            _end_cli(proc, controlplane)
    with controlplane.client("alice") as alice:  # Ctrl-C cancelled it: nothing of it is left
        [job] = [j for j in alice.jobs() if j.name == "jupyter" and j.nodes == 2][-1:]
        assert alice.wait(job.id, timeout=120).state == JobState.CANCELLED
        for _ in range(120):
            if not processes_of_job(job.id):
                break
            time.sleep(0.5)
        assert processes_of_job(job.id) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nsenter"),
                    reason="network namespaces need root, iproute2 and nsenter")
def test_a_server_in_a_node_with_its_own_network_is_reached_only_through_the_relay(
        fresh_controlplane) -> None:  # noqa: ANN001
    """The node's namespace has loopback and its cluster's bridge, no route to the
    host: the server answers anyway, so nothing but the agent's own outbound
    connection (through the gate's forwarder to the control plane) carries it."""
    from skyport.config import GateEntry

    cp = fresh_controlplane(gates=[GateEntry(name="local", type="local",
                                             config={"cpus": 4, "network": "namespace"})])
    cp.add_user("alice")
    cmd = [sys.executable, "-m", "skyport", "--home", str(cp.home), "--user", "alice",
           "jupyter", "--cpus", "1", "--time", "00:10:00", "--gate", "local"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        assert line.startswith("http://127.0.0.1:"), (line, proc.stderr.read(2000))  # type: ignore[union-attr]
        base, _, token = line.partition("/?token=")
        status = httpx.get(f"{base}/api/status", headers={"Authorization": f"token {token}"},
                           timeout=60)
        assert status.status_code == 200, status.text
        with cp.client("alice") as alice:
            [job] = [j for j in alice.jobs() if j.name == "jupyter"
                     and not j.state.is_terminal()]
            pids = processes_of_job(job.id)
            assert pids
            ours = os.readlink("/proc/self/ns/net")
            for pid in pids:  # every process of the job lives in the node's namespace
                assert os.readlink(f"/proc/{pid}/ns/net") != ours
            links = subprocess.run(["nsenter", "-t", str(pids[0]), "-n", "ip", "-o", "link"],
                                   capture_output=True, text=True, check=True).stdout
            names = sorted(part.split(":")[1].strip().split("@")[0]
                           for part in links.splitlines())
            assert names == ["lo", "sky0"], links
            routes = subprocess.run(["nsenter", "-t", str(pids[0]), "-n", "ip", "route"],
                                    capture_output=True, text=True, check=True).stdout
            assert "default" not in routes, routes  # no way out but the relay's forwarder
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(60)
            ended = alice.wait(job.id, timeout=120)
            assert ended.state == JobState.CANCELLED
            for _ in range(240):  # the cluster goes, and its network with it
                listed = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                        text=True, check=True).stdout
                if str(ended.cluster_id) not in listed:
                    break
                time.sleep(0.5)
            assert str(ended.cluster_id) not in listed, listed
    finally:
        _end_cli(proc, cp)
