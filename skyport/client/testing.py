"""A control plane in this process for tests of client code: the real thing, in memory.

``TestControlPlane`` builds the real REST API (``skyport.api.app.create_app``)
over the real Core (``CoreService`` and its loop, the real scheduler policy)
and a memory gate (``gates.memory``: clusters are records, no processes), and
puts it behind the ``Client``'s httpx transport: no Ray, no TLS, no sockets.
A job submitted here is planned, scheduled and given a cluster by the Core as
in production; the test then plays the cluster's agents through the real
agent routes (``agents``), the way a node would::

    with TestControlPlane() as cp:
        client = cp.client()                 # admin; cp.client("alice") for a user
        job = client.submit(spec)
        cp.run(job.id, stdout=b"hello\\n", files={"outputs/a.txt": b"A"})
        assert client.wait(job.id).state is JobState.SUCCEEDED

Who is calling comes from the certificate in production; here each client
names its user, and the app's user dependency (``skyport.api.deps.user``)
reads that name instead.  ``requests`` records every request a client sent.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import Request

from gates.memory import MemoryGate, MemoryGateConfig
from skyport.agent.client import AgentClient
from skyport.api import deps
from skyport.api.app import create_app
from skyport.client.core import Client
from skyport.core.service import CoreService, CoreSettings
from skyport.errors import AuthenticationError, NotFoundError, SkyportError
from skyport.gate import Capacity, ClusterInfo, ClusterRequest, Flavor
from skyport.gate.bootstrapcred import Exchanged
from skyport.gate.runner import GateRunner
from skyport.models import Job, JobState
from skyport.pki import Identity
from skyport.scheduler import SchedulePlan, SchedulerService, UsageCharge
from skyport.storage import JobStorage
from skyport.store import JobStore
from skyport.timetable import Snapshot

__all__ = ["BASE_URL", "JobAgents", "TestControlPlane"]

BASE_URL = "https://skyport.test"
_USER_HEADER = "x-skyport-test-user"  # set by this module's transport only
T = TypeVar("T")


class TestControlPlane:
    """The REST API and the Core over a memory gate, on an event loop of their own."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path | None = None, *, gate: dict[str, Any] | None = None,
                 policy: str = "fcfs", wait_s: float = 30.0,
                 audit_log: Path | None = None, storage: JobStorage | None = None) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory()
        self.root = Path(root if root is not None else self._tmp.name)  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)
        self.wait_s = wait_s  # how long the helpers wait for the Core's next step
        self.requests: list[httpx.Request] = []
        self.store = JobStore(self.root / "jobs.db")
        self.storage = storage or JobStorage((self.root / "storage").as_uri())
        self.gate = MemoryGate("memory", MemoryGateConfig(**(gate or {})), self.root)
        scheduler = SchedulerService(policy, {})

        async def planner(snapshot: Snapshot, charges: list[UsageCharge]) -> SchedulePlan:
            return scheduler.plan(snapshot, charges)

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-core",
                                        daemon=True)
        self._thread.start()

        async def build() -> CoreService:  # the service's asyncio objects belong to this loop
            return CoreService(self.store, self.storage, {"memory": _AsyncGate(self.gate)},
                               planner, CoreSettings(control_url=BASE_URL, ca_pem="",
                                                     replan_interval_s=0.01),
                               policy_name=policy)

        self.service = self._run(build())
        self._run(self.service.start())
        self.app = create_app(self.service, self.storage, audit_log=audit_log,
                              secrets_dir=self.root / "secrets")
        self.app.state.relay.secrets.sweep_s = 0.05  # an ended job's secrets go at once
        self.app.dependency_overrides[deps.user] = _named_user

    # -- doors ----------------------------------------------------------------------

    def client(self, username: str = "admin", role: str = "") -> Client:
        """A ``Client`` calling as ``username`` (role ``admin`` for "admin", else ``user``)."""
        who = f"{username}:{role or ('admin' if username == 'admin' else 'user')}"
        return Client(BASE_URL, transport=_Transport(self, who))

    def agent(self, job_id: str, token: str) -> AgentClient:
        """An agent's client for ``job_id`` with ``token`` (no retries: errors surface)."""
        return AgentClient(BASE_URL, job_id, token, retry_for_s=0,
                           transport=_Transport(self, None))

    # -- playing a job's cluster ---------------------------------------------------------

    def wait_state(self, job_id: str, *states: JobState) -> Job:
        """The job once the Core has moved it into one of ``states``."""
        deadline = time.monotonic() + self.wait_s
        while True:
            job = self.store.get(job_id, events=False)
            if job.state in states:
                return job
            if time.monotonic() > deadline:
                raise SkyportError(f"job {job_id} is {job.state.value}, not "
                                   f"{'/'.join(s.value for s in states)}: {job.reason}")
            time.sleep(0.005)

    def wait_planned(self, job_id: str) -> None:
        """Until the Core's plan holds ``job_id`` (a queued job then has its planned start)."""
        deadline = time.monotonic() + self.wait_s
        while job_id not in {e["job_id"] for e in self._run(self.service.timetable())["entries"]}:
            if time.monotonic() > deadline:
                raise SkyportError(f"job {job_id} is not in the Core's plan")
            time.sleep(0.005)

    def agents(self, job_id: str) -> JobAgents:
        """The agents of ``job_id``'s cluster, once the Core has created it."""
        job = self.wait_state(job_id, JobState.PROVISIONING, *_HOLDING)
        deadline = time.monotonic() + self.wait_s
        while True:  # the Core records PROVISIONING first, then asks the gate to create
            try:
                token = self.gate.token(job.cluster_id or "")
                break
            except NotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        return JobAgents(self, job_id, token, job.nodes)

    def start(self, job_id: str) -> JobAgents:
        """Every node says hello and the job runs: RUNNING."""
        agents = self.agents(job_id)
        agents.hello()
        agents.running()
        return agents

    def run(self, job_id: str, exit_code: int = 0, *, stdout: bytes = b"",
            stderr: bytes = b"", files: dict[str, bytes] | None = None,
            timed_out: bool = False) -> Job:
        """Run the job as its nodes would: hello, RUNNING, logs and files, exit."""
        agents = self.start(job_id)
        agents.write(stdout=stdout, stderr=stderr, files=files)
        return agents.exit(exit_code, timed_out=timed_out)

    def run_function(self, job_id: str) -> Job:
        """Run a function job's payload here, as its node would, and finish the job."""
        from skyport.runtime.function import run

        agents = self.start(job_id)
        with tempfile.TemporaryDirectory() as tmp:
            payload, result = Path(tmp) / "skyport-payload.pkl", Path(tmp) / "result.pkl"
            for f in agents[0].files():  # the payload, and any upstream job's result
                if f.path.startswith("inputs/"):
                    agents[0].download(f.path, Path(tmp) / f.path.removeprefix("inputs/"))
            status = run(payload, result)
            agents[0].put_file("outputs/skyport-result.pkl", result)
        return agents.exit(status)

    # -- plumbing --------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self.service.stop())
        self._run(_cancel_the_rest())  # the loop's tasks end before the loop does
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> TestControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _cancel_the_rest() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_HOLDING = tuple(s for s in JobState if s.has_cluster() and s != JobState.PROVISIONING)


class JobAgents:
    """The agents of one job's cluster, acting through the real agent routes."""

    def __init__(self, cp: TestControlPlane, job_id: str, token: str, nodes: int) -> None:
        self.cp = cp
        self.job_id = job_id
        self.token = token
        self.nodes = [cp.agent(job_id, token) for _ in range(nodes)]

    def __getitem__(self, rank: int) -> AgentClient:
        return self.nodes[rank]

    def hello(self) -> None:
        for rank, agent in enumerate(self.nodes):
            agent.hello(rank, f"{self.job_id}-node-{rank}", "testhost", 0)

    def running(self) -> Job:
        self.cp.wait_state(self.job_id, JobState.STAGING_IN, JobState.RUNNING)
        return self.nodes[0].set_state(JobState.RUNNING.value, "test: running")

    def write(self, *, stdout: bytes = b"", stderr: bytes = b"",
              files: dict[str, bytes] | None = None) -> None:
        """Append to the job's logs and store files (``outputs/...``), as node 0."""
        with tempfile.TemporaryDirectory() as tmp:
            for stream, data in (("stdout", stdout), ("stderr", stderr)):
                if data:
                    size = self.cp.storage.size(self.job_id, f"logs/{stream}")
                    self.nodes[0].post_log(stream, size, data)
            for path, data in (files or {}).items():
                src = Path(tmp) / "f"
                src.write_bytes(data)
                self.nodes[0].put_file(path, src)

    def exit(self, exit_code: int = 0, *, timed_out: bool = False, reason: str = "") -> Job:
        """Node 0 reports the payload's end (no reason: the Core words it, 'exit code N')."""
        return self.nodes[0].exit(exit_code, timed_out, reason)


# -- the transport: the ASGI app, driven from a sync httpx client -------------------------


class _Transport(httpx.BaseTransport):
    """Runs each request through the app on the control plane's loop (a thread)."""

    def __init__(self, cp: TestControlPlane, who: str | None) -> None:
        self.cp = cp
        self.who = who
        self._asgi = httpx.ASGITransport(app=cp.app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.cp.requests.append(request)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != _USER_HEADER.encode()]
        if self.who is not None:
            headers.append((_USER_HEADER.encode(), self.who.encode()))
        inner = httpx.Request(request.method, request.url, headers=headers,
                              content=request.read())

        async def send() -> httpx.Response:
            response = await self._asgi.handle_async_request(inner)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers,
                                  content=body, request=request)

        return self.cp._run(send())


def _named_user(request: Request) -> Identity:
    """The user named by the test transport (in place of the certificate's)."""
    name, _, role = request.headers.get(_USER_HEADER, "").partition(":")
    if not name or role not in ("admin", "user"):
        raise AuthenticationError("a client certificate issued by this Sky Port's CA is required")
    request.state.who = name  # as skyport.api.deps.user does, for the audit log
    return Identity(username=name, role=role)  # type: ignore[arg-type]


class _AsyncGate:
    """The memory gate behind the real ``GateRunner``, as the Core's ``GatePort``.

    What a ``GateActor`` is in the control plane, without Ray: the runner's
    validation, agent environment and feature checks run as they do there.
    """

    def __init__(self, gate: MemoryGate) -> None:
        self.gate = gate
        self.runner = GateRunner(gate)

    async def flavors(self) -> list[Flavor]:
        return self.runner.flavors()

    async def capacity(self) -> Capacity:
        return self.runner.capacity()

    async def type_name(self) -> str:
        return self.gate.type_name

    async def can_ever_fit(self, nodes: int, cpus_per_node: int, gpus_per_node: int,
                           mem_mb: int | None, flavor: str | None) -> str | None:
        return self.runner.can_ever_fit(nodes, cpus_per_node, gpus_per_node, mem_mb, flavor)

    async def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        return self.runner.create_cluster(request)

    async def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        return self.runner.describe_cluster(cluster_id)

    async def delete_cluster(self, cluster_id: str) -> None:
        self.runner.delete_cluster(cluster_id)

    async def list_clusters(self) -> list[ClusterInfo]:
        return self.runner.list_clusters()

    async def warm_idle_timeout_s(self) -> float:
        return self.runner.warm_idle_timeout_s()

    async def kill_node(self, cluster_id: str, rank: int) -> bool:
        return self.runner.kill_node(cluster_id, rank)

    async def preempt(self, cluster_id: str, reclaim_after_s: float) -> float:
        return self.runner.preempt(cluster_id, reclaim_after_s)

    async def exchange_bootstrap(self, credential: str) -> Exchanged:
        return self.runner.exchange_bootstrap(credential)
