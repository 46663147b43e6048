"""A real control plane for the integration tests: local Ray, Core, Scheduler,
the local gate and the REST API over mutual TLS, started once per session.

Tests that restart or kill a control plane get their own (``fresh_controlplane``)
so that the shared one stays up for everybody else.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skyport import pki
from skyport.client import Client, connect
from skyport.config import StateDir
from skyport.controlplane import init_state, start, stop

LOCAL_CPUS = 8  # more than this machine's cores: nodes then share physical cores

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@dataclass
class ControlPlane:
    state: StateDir

    @property
    def home(self) -> Path:
        return self.state.root

    def client(self, user: str = "admin") -> Client:
        return connect(self.home, user)

    def add_user(self, name: str, role: str = "user") -> None:
        if not self.state.user_cert(name)[0].exists():
            pki.issue_user_cert(self.state.pki, name, role=role)  # type: ignore[arg-type]

    def start(self) -> None:
        start(self.state)

    def stop(self) -> None:
        stop(self.state)


def _make(tmp_root: Path, **init_kwargs: object) -> ControlPlane:
    # a short path: Ray's Unix sockets live below it and are limited to 107 bytes
    home = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp"))
    state = StateDir(home)
    init_state(state, local_cpus=LOCAL_CPUS, **init_kwargs)  # type: ignore[arg-type]
    cp = ControlPlane(state)
    cp.start()
    return cp


def _teardown(cp: ControlPlane) -> None:
    try:
        cp.stop()
    finally:
        if os.environ.get("SKYPORT_KEEP_TEST_HOMES") != "1":
            shutil.rmtree(cp.home, ignore_errors=True)


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The shared control plane, with users alice and bob besides admin."""
    cp = _make(tmp_path_factory.mktemp("cp"))
    cp.add_user("alice")
    cp.add_user("bob")
    yield cp
    _teardown(cp)


@pytest.fixture
def admin(controlplane: ControlPlane) -> Iterator[Client]:
    with controlplane.client("admin") as c:
        yield c


@pytest.fixture
def fresh_controlplane(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ControlPlane]]:
    """A factory for control planes of one's own (restarts, other storage)."""
    made: list[ControlPlane] = []

    def factory(**init_kwargs: object) -> ControlPlane:
        cp = _make(tmp_path_factory.mktemp("cp"), **init_kwargs)
        made.append(cp)
        return cp

    yield factory
    for cp in made:
        _teardown(cp)


def processes_of_job(job_id: str) -> list[int]:
    """PIDs of live processes whose environment says they belong to ``job_id``."""
    marker = f"SKYPORT_JOB_ID={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    continue
        except OSError:
            continue
        if marker in env:
            found.append(int(entry))
    return found


def processes_left(job_id: str, timeout: float = 30) -> list[int]:
    """The job's processes still alive after up to ``timeout`` s (``[]`` once all are gone).

    A job's end is committed before its cluster's delete has finished: a failed or
    lost attempt's nodes are torn down right after, as Slurm's COMPLETING does, so a
    client that hears of the end at once may still see the last processes go.
    """
    deadline = time.monotonic() + timeout
    while (left := processes_of_job(job_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def until_job(client, job_id: str, check, what: str, timeout: float = 120):  # type: ignore[no-untyped-def]
    """The job once ``check(job)`` holds; fails naming ``what`` and where the job stands."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if check(job):
            return job
        assert time.monotonic() < deadline, (what, job.state, job.reason, job.wait_reason,
                                             job.wait_detail)
        time.sleep(0.2)
