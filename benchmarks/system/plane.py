"""A private control plane for the system benchmark, and the bare baselines beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from skyport import pki
from skyport.client import Client, connect
from skyport.client.core import _ssl_context
from skyport.config import GateEntry, StateDir
from skyport.controlplane import init_state, start, stop

USER = "bench"

# Every job names its gate, so that one measure's jobs never land on another's nodes.
GATES = [
    # the default local gate's config, 8 cores: drain, MPI; whatever the defaults are
    GateEntry(name="local", type="local", config={"cpus": 8}),
    # one core: submissions queue there and do not load the machine while accepted
    GateEntry(name="accept", type="local", config={"cpus": 1, "max_nodes": 1}),
    GateEntry(name="cold", type="local", config={"cpus": 2, "idle_timeout_s": 0}),
    GateEntry(name="warm", type="local", config={"cpus": 2, "idle_timeout_s": 600}),
]


@dataclass
class Plane:
    state: StateDir

    @property
    def home(self) -> Path:
        return self.state.root

    def client(self, user: str = USER) -> Client:
        return connect(self.home, user)

    def env(self) -> dict[str, str]:
        """The environment a `skyport` command needs to reach this plane as the bench user."""
        return {**os.environ, "SKYPORT_HOME": str(self.home), "SKYPORT_USER": USER}


@contextmanager
def private_plane() -> Iterator[Plane]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a short path: Ray's Unix sockets live below it and are limited to 107 bytes
    home = Path(tempfile.mkdtemp(prefix="spb-", dir="/tmp"))
    state = StateDir(home)
    try:
        init_state(state, gates=GATES)
        pki.issue_user_cert(state.pki, USER, role="user")
        start(state)  # a start that fails leaves no state directory behind either
        yield Plane(state)
    finally:
        try:
            stop(state)
        finally:
            if os.environ.get("SKYPORT_KEEP_BENCH_HOME") != "1":
                shutil.rmtree(home, ignore_errors=True)


@contextmanager
def echo_server(plane: Plane) -> Iterator[Client]:
    """The minimal HTTPS + mTLS endpoint (``echo_server``), and a client for it."""
    port_file = plane.home / "echo.port"
    port_file.unlink(missing_ok=True)  # an earlier endpoint's
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.system.echo_server", "--pki", str(plane.state.pki),
         "--port-file", str(port_file)],
        cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the baseline endpoint did not start")
            time.sleep(0.05)
        cert, key = plane.state.user_cert(USER)
        ctx = _ssl_context(plane.state.pki / "ca.crt", cert, key)
        client = Client(f"https://127.0.0.1:{int(port_file.read_text())}", ssl_context=ctx)
        yield client
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def bare_post(client: Client, body: dict) -> None:
    r = client._http.post("/v1/jobs", json=body)
    if r.status_code != 201:
        raise RuntimeError(f"baseline answered {r.status_code}")


def bare_get(client: Client) -> None:
    client._http.get("/v1/jobs")


def venv_bin(name: str) -> str:
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}"
                                    f"{os.environ.get('PATH', '')}")
    if found is None:
        raise RuntimeError(f"{name} not found")
    return found


__all__ = ["GATES", "USER", "Plane", "bare_get", "bare_post", "echo_server",
           "private_plane", "venv_bin"]
