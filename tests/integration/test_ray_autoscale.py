"""The ray gate on an autoscaling Ray cluster: a job waits while the cluster scales up.

Ray's fake multi-node autoscaler (provider ``fake_multinode``, see
``fake_autoscaler.yaml``) runs a whole autoscaling cluster on this machine: the
head (no CPUs for jobs) is started with ``RAY_FAKE_CLUSTER=1 ray start --head
--autoscaling-config=...``, and its autoscaler monitor starts a raylet per
"machine" it launches (4 CPUs each, at most 2).  A Sky Port control plane joins
the head with a ``ray`` gate that declares the worker shape (``node_cpus``), as
an autoscaling cluster with no worker up needs.

``ray start`` runs in a session of its own: everything of this Ray cluster (GCS,
raylets, the monitor and the worker raylets it starts, every Ray worker
process) is a member of that session, and the fixture kills that session's
members, by pid, when the module is done.  Module scope, not session: the other
Ray tests (test_ray_gate.py) make this process the driver of their own cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from skyport.agent.procfs import kill_sessions, members, proc_stat
from skyport.client import connect
from skyport.config import StateDir
from skyport.launch.mpi import missing_mpi
from skyport.models import JobState
from tests.raytest import joined_controlplane, ray_token_auth

from .conftest import processes_of_job
from .test_mpi import check_hybrid, hybrid_spec

ray = pytest.importorskip("ray")
pytest.importorskip("ray.autoscaler._private.fake_multi_node.node_provider",
                    reason="this Ray has no fake multi-node autoscaler")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CONFIG = Path(__file__).with_name("fake_autoscaler.yaml")
GATE = "ray"
NAMESPACE = "skyport-autoscale-tests"
WORKER_CPUS = 4
OBJECT_STORE = 80 * 1024**2
HEAD_START_S = 120.0


@dataclass
class FakeCluster:
    address: str
    tmp: Path
    config: dict[str, Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        pytest.skip("no 'ray' command next to this Python or on PATH")
    return found


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeCluster]:
    """An autoscaling Ray cluster of one head, with this process as its driver."""
    # short: Ray's Unix socket paths under the session folder are limited to 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="sfa-", dir="/tmp"))
    auth_scope = ExitStack()  # the head, its workers and this driver share one token
    auth = auth_scope.enter_context(ray_token_auth(str(tmp)))
    address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
    config = yaml.safe_load(CONFIG.read_text())
    # the provider starts each worker raylet against this GCS (default: <ip>:6379)
    config["provider"]["gcs_address"] = address
    (tmp / "autoscaler.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "RAY_TMPDIR": str(tmp), "RAY_USAGE_STATS_ENABLED": "0",
           **auth}
    env.pop("RAY_ADDRESS", None)
    cmd = [_ray_cli(), "start", "--head", f"--port={address.rsplit(':', 1)[1]}",
           "--num-cpus=0", f"--memory={1024**3}", f"--object-store-memory={OBJECT_STORE}",
           "--include-dashboard=false", "--disable-usage-stats",
           f"--autoscaling-config={tmp / 'autoscaler.yaml'}", f"--temp-dir={tmp / 'ray'}"]
    log = (tmp / "ray-start.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    leader = proc_stat(proc.pid)  # read before it is reaped: (pid, start time) is the session
    assert leader is not None
    try:
        try:
            rc = proc.wait(timeout=HEAD_START_S)
        except subprocess.TimeoutExpired:
            rc = None
        log.close()
        if rc != 0:
            pytest.fail(f"ray start --head {'timed out' if rc is None else f'exited {rc}'}:\n"
                        + (tmp / "ray-start.log").read_text()[-3000:])
        ray.init(address=address, namespace="skyport-tests", log_to_driver=False)
        yield FakeCluster(address=address, tmp=tmp, config=config)
    finally:
        ray.shutdown()
        log.close()
        gone = kill_sessions([(leader.pid, leader.start_time)], grace_s=10.0, reap=proc.poll)
        left = members(sessions={leader.pid})
        auth_scope.close()
        if os.environ.get("SKYPORT_KEEP_TEST_HOMES") != "1":  # the monitor's log is in there
            shutil.rmtree(tmp, ignore_errors=True)
        assert gone and not left, f"processes of the fake Ray cluster left running: {left}"


@pytest.fixture
def autoscale_controlplane(fake_cluster: FakeCluster) -> Iterator[StateDir]:
    """A control plane joined to the fake cluster's head, with the ray gate its only gate."""
    config = {"namespace": NAMESPACE, "node_cpus": WORKER_CPUS, "node_mem_mb": 2048,
              "ready_timeout_s": 120, "max_nodes": 2}
    with joined_controlplane(fake_cluster.address, GATE, config) as state:
        yield state


def _alive() -> dict[str, dict[str, float]]:
    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}


def _group(cluster_id: str) -> dict[str, Any] | None:
    from ray.util.placement_group import placement_group_table

    found = [e for e in placement_group_table().values()
             if e["name"] == f"skyport-{GATE}-{cluster_id}"]
    return found[-1] if found else None


def _changes(seen: list[tuple[float, int, JobState]]) -> list[str]:
    """The samples where the node count or the job state changed, short."""
    out, last = [], None
    for t, n, s in seen:
        if (n, s) != last:
            out.append(f"{t:.1f}s {n} nodes {s.value}")
            last = (n, s)
    return out


@pytest.mark.skipif(missing_mpi("mpich") is not None,
                    reason=f"MPICH not installed: {missing_mpi('mpich')}")
def test_two_node_job_waits_for_the_autoscaler_then_runs_on_two_new_nodes(
    fake_cluster: FakeCluster, autoscale_controlplane: StateDir,
) -> None:
    before = _alive()
    assert len(before) == 1 and not any(r.get("CPU") for r in before.values()), before
    # (seconds since submit, alive Ray nodes, job state): what an operator would watch
    seen: list[tuple[float, int, JobState]] = []
    placed: dict[str, Any] | None = None
    with connect(autoscale_controlplane.root, "admin") as admin:
        job = admin.submit(hybrid_spec())  # 2 nodes x 4 CPUs: MPI ranks on both nodes
        t0 = time.monotonic()
        deadline = t0 + 100
        while placed is None:
            nodes, cur = len(_alive()), admin.job(job.id)
            seen.append((time.monotonic() - t0, nodes, cur.state))
            assert not cur.state.is_terminal(), (cur.state, cur.reason, _changes(seen))
            if cur.cluster_id and (g := _group(cur.cluster_id)) and g["state"] == "CREATED":
                placed = g
                break
            assert time.monotonic() < deadline, \
                f"no placement group within 100 s: {_changes(seen)}; job: {cur.reason}"
            time.sleep(0.2)
        scaled_s = seen[-1][0]
        out, ranks = check_hybrid(admin, job.id)
        done = admin.job(job.id)
    after = _alive()
    # the job waited while the workers came up: no worker at first, then 2 new ones
    assert seen[0][1] == 1 and not seen[0][2].is_terminal()
    assert any(n == 1 and s == JobState.PROVISIONING for _, n, s in seen), _changes(seen)
    assert not [x for x in seen if x[2] == JobState.RUNNING and x[1] < 3], _changes(seen)
    assert [n for _, n, _ in seen] == sorted(n for _, n, _ in seen), _changes(seen)  # rises
    new = set(after) - set(before)
    assert len(new) == 2 and all(after[n].get("CPU") == WORKER_CPUS for n in new), after
    # one bundle on each new Ray node, and the job's 2 nodes there
    assert set(placed["bundles_to_node_id"].values()) == new, placed
    assert all(b == {"CPU": float(WORKER_CPUS)} for b in placed["bundles"].values()), placed
    assert done.state == JobState.SUCCEEDED
    assert len(set(done.node_names)) == 2 and {r[2] for r in ranks} == set(done.node_names)
    events = {e.state: e.time for e in done.events}
    wait_s = (events[JobState.STAGING_IN] - events[JobState.PROVISIONING]).total_seconds()
    print(f"\nscale-up 1 -> 3 Ray nodes ({placed['strategy']}): placement group created "
          f"{scaled_s:.1f} s after submit; PROVISIONING -> STAGING_IN {wait_s:.1f} s; "
          f"seen: {_changes(seen)}")
    # nothing of the job is left, and its group is gone
    assert processes_of_job(job.id) == []
    t1 = time.monotonic()
    while (_group(done.cluster_id) or {}).get("state", "REMOVED") != "REMOVED":
        assert time.monotonic() - t1 < 30, f"placement group not removed: {_group(done.cluster_id)}"
        time.sleep(0.2)
    # idle workers go away after idle_timeout_minutes
    idle_s = fake_cluster.config["idle_timeout_minutes"] * 60
    t1 = time.monotonic()
    while len(_alive()) > 1:
        assert time.monotonic() - t1 < idle_s + 60, f"idle workers not removed: {_alive()}"
        time.sleep(0.5)
    print(f"scale-down 3 -> 1 Ray nodes {time.monotonic() - t1:.1f} s after the job "
          f"(idle timeout {idle_s:g} s)")
