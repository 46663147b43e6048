"""The ray gate under a real control plane joined to a multi-node Ray cluster.

A ``ray.cluster_utils.Cluster`` (a head with no CPUs for jobs and two 4-CPU
worker nodes, all on this machine) lives for this module; the control plane
joins it (``skyport start --address``) with a ``ray`` gate as its only gate.
The test process is a driver of the same Ray cluster, so it can look at the
placement groups and at the gate actor the way an operator would.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from skyport.client import connect
from skyport.config import StateDir
from skyport.controlplane import read_pid
from skyport.gate import make_gate
from skyport.models import JobState
from skyport.script import build_spec
from tests.raytest import joined_controlplane, local_ray_cluster

from .conftest import processes_of_job
from .test_mpi import check_hybrid, hybrid_spec

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORKER_CPUS = 4
OBJECT_STORE = 80 * 1024**2
GATE = "ray"
NAMESPACE = "skyport-ray-tests"
TWO_NODES = "#!/bin/bash\n#SKYPORT --nodes=2 --cpus-per-node=2 --time=5m\n"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    with local_ray_cluster(head_mem=1024**3, workers=2, worker_cpus=WORKER_CPUS,
                           worker_mem=2 * 1024**3) as cluster:
        yield cluster


def _gate_config(cluster: Any) -> dict[str, Any]:
    return {"namespace": NAMESPACE, "ready_timeout_s": 60, "max_nodes": 4}


@pytest.fixture
def ray_controlplane(ray_cluster: Any) -> Iterator[StateDir]:
    """A control plane joined to the Ray cluster, with the ray gate as its only gate."""
    with joined_controlplane(ray_cluster.address, GATE, _gate_config(ray_cluster)) as state:
        yield state


def _group(cluster_id: str) -> dict[str, Any] | None:
    """The cluster's placement group as Ray's table shows it (the newest, removed or not)."""
    from ray.util.placement_group import placement_group_table

    found = [e for e in placement_group_table().values()
             if e["name"] == f"skyport-{GATE}-{cluster_id}"]
    return found[-1] if found else None


def _wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _gate_actor() -> Any:
    return ray.get_actor(f"gate:{GATE}", namespace="skyport")


def _worker_ids() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}


def test_hybrid_job_runs_strict_spread_on_two_ray_nodes(ray_controlplane: StateDir) -> None:
    with connect(ray_controlplane.root, "admin") as admin:
        job = admin.submit(hybrid_spec())
        cid = _wait_for("a cluster id", lambda: admin.job(job.id).cluster_id)
        # watch the placement group while the job runs: it is removed when the job ends
        placed = _wait_for("the placement group", lambda: (
            (g := _group(cid)) and g["state"] == "CREATED" and g) or
            admin.job(job.id).state.is_terminal(), timeout=120)
        assert placed is not True, admin.job(job.id)
        out, ranks = check_hybrid(admin, job.id)
        done = admin.job(job.id)
    assert placed["strategy"] == "STRICT_SPREAD"
    assert set(placed["bundles_to_node_id"].values()) == _worker_ids()  # one bundle each
    assert all(b == {"CPU": 4.0} for b in placed["bundles"].values()), placed["bundles"]
    assert len(set(done.node_names)) == 2
    assert {r[2] for r in ranks} == set(done.node_names)
    _wait_for("the placement group's removal",
              lambda: (_group(cid) or {}).get("state", "REMOVED") == "REMOVED")
    events = {e.state: e.time for e in done.events}
    ready_s = (events[JobState.STAGING_IN] - events[JobState.PROVISIONING]).total_seconds()
    print(f"2-node ray cluster: provisioning to agents in {ready_s:.2f} s")


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_hybrid_job_on_ray_nodes_each_in_a_network_namespace_of_its_own(
    ray_cluster: Any,
) -> None:
    from .test_netns import IP, check_on_own_networks, netns_spec

    if IP is None:
        pytest.skip("network namespaces need iproute2 (no `ip`)")
    config = {**_gate_config(ray_cluster), "network": "namespace"}
    with joined_controlplane(ray_cluster.address, GATE, config) as state, \
            connect(state.root, "admin") as admin:
        job = admin.submit(netns_spec())
        cid = _wait_for("a cluster id", lambda: admin.job(job.id).cluster_id, timeout=120)
        check_on_own_networks(admin, job.id)  # and nothing of the network is left
        done = admin.job(job.id)
        assert done.gate == GATE and len(set(done.node_names)) == 2
    _wait_for("the placement group's removal",
              lambda: (_group(cid) or {}).get("state", "REMOVED") == "REMOVED")


def test_cancel_kills_agents_and_removes_the_placement_group(
    ray_controlplane: StateDir,
) -> None:
    with connect(ray_controlplane.root, "admin") as admin:
        job = admin.submit(build_spec(TWO_NODES + "sleep 300\n"))
        _wait_for("RUNNING", lambda: admin.job(job.id).state == JobState.RUNNING)
        cid = admin.job(job.id).cluster_id
        info = ray.get(_gate_actor().describe_cluster.remote(cid), timeout=60)
        assert info.state == "running", info
        assert "STRICT_SPREAD" in info.reason
        agents = [n.details["pid"] for n in info.nodes]
        assert len(agents) == 2 and all(_running(p) for p in agents)
        # the payload runs (its sandbox execs it a moment after the agent says RUNNING)
        _wait_for("the payload's processes", lambda: processes_of_job(job.id) != [],
                  timeout=30)
        admin.cancel(job.id)
        assert admin.wait(job.id, timeout=60).state == JobState.CANCELLED
    _wait_for("no process of the job", lambda: processes_of_job(job.id) == [], timeout=30)
    _wait_for("the agents' end", lambda: not any(_running(p) for p in agents), timeout=30)
    _wait_for("the placement group's removal",
              lambda: (_group(cid) or {}).get("state", "REMOVED") == "REMOVED")
    prefix = f"skyport-{GATE}-{cid}-"
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(prefix)]


def test_new_gate_instance_lists_and_deletes_a_cluster_left_behind(
    ray_cluster: Any, ray_controlplane: StateDir,
) -> None:
    with connect(ray_controlplane.root, "admin") as admin:
        job = admin.submit(build_spec(TWO_NODES + "sleep 300\n"))
        _wait_for("RUNNING", lambda: admin.job(job.id).state == JobState.RUNNING)
        cid = admin.job(job.id).cluster_id
    info = ray.get(_gate_actor().describe_cluster.remote(cid), timeout=60)
    agents = [n.details["pid"] for n in info.nodes]
    pid = read_pid(ray_controlplane)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the control plane dies; its cluster stays
    _wait_for("the control plane's end", lambda: not _running(pid), timeout=30)
    ray.kill(_gate_actor())  # and so does its gate: a new instance must do everything
    gate = make_gate(GATE, "ray", _gate_config(ray_cluster), ray_controlplane)
    listed = {c.cluster_id: c for c in gate.list_clusters()}
    assert cid in listed, listed
    assert listed[cid].job_id == job.id and listed[cid].state == "running", listed[cid]
    gate.delete_cluster(cid)
    assert gate.describe_cluster(cid).state == "gone"
    assert cid not in {c.cluster_id for c in gate.list_clusters()}
    assert not any(_running(p) for p in agents)
    assert processes_of_job(job.id) == []
    assert (_group(cid) or {}).get("state", "REMOVED") == "REMOVED"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
