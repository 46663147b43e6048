"""The ray gate against the gate conformance suite, on a 2-worker Ray cluster of its own.

The cluster (``ray.cluster_utils.Cluster``: a head with no CPUs for jobs and
two 4-CPU worker nodes, all on this machine) lives for this module; the test
process is its driver and the gate runs in it, as a gate does in its actor.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skyport.errors import CapacityError, ConfigError
from skyport.gate import ClusterInfo, ClusterRequest, Gate, make_gate
from tests.conformance.gate_suite import GateConformance, NodeFacts, ca_pem_for_tests
from tests.raytest import local_ray_cluster

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

WORKER_CPUS = 4
WORKER_MEM = 2 * 1024**3
OBJECT_STORE = 80 * 1024**2


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    with local_ray_cluster(head_mem=512 * 1024**2, workers=2, worker_cpus=WORKER_CPUS,
                           worker_mem=WORKER_MEM) as cluster:
        yield cluster


class TestRayGateConformance(GateConformance):
    fill_limit = 2 * WORKER_CPUS  # 1-cpu clusters: the two workers hold 8
    up_timeout_s = 60.0

    @pytest.fixture
    def gate_config(self, ray_cluster: object, tmp_path: Path) -> dict[str, object]:
        return {"address": ray_cluster.address, "namespace": f"t-{uuid.uuid4().hex[:8]}",
                "ready_timeout_s": 3.0, "max_nodes": 4, "kill_grace_s": 1.0,
                "workdir_root": str(tmp_path / "nodes")}

    @pytest.fixture
    def gate(self, gate_config: dict[str, object], tmp_path: Path) -> Gate:
        return make_gate("rg", "ray", gate_config, tmp_path / "state")

    @pytest.fixture
    def reopen_gate(self, gate_config: dict[str, object],
                    tmp_path: Path) -> Callable[[], Gate]:
        return lambda: make_gate("rg", "ray", gate_config, tmp_path / "state")

    @pytest.fixture
    def make_request(self, tmp_path: Path) -> Callable[..., ClusterRequest]:
        ca_pem = ca_pem_for_tests(tmp_path)

        def make(**overrides: object) -> ClusterRequest:
            fields: dict[str, object] = {
                "cluster_id": f"c{uuid.uuid4().hex[:10]}-0", "job_id": uuid.uuid4().hex[:12],
                "owner": "alice", "nodes": 1, "cpus_per_node": 1, "gpus_per_node": 0,
                "mem_mb": None, "flavor": None, "control_url": "https://127.0.0.1:9",
                "ca_pem": ca_pem, "token": "t0ken-for-tests"}
            return ClusterRequest(**{**fields, **overrides})  # type: ignore[arg-type]

        return make

    @pytest.fixture
    def node_probe(
        self, gate_config: dict[str, object]
    ) -> Callable[[ClusterInfo], list[NodeFacts]]:
        """Ray's and /proc's view: the named node actors and placement group, the agents."""
        from ray.util.placement_group import placement_group_table

        namespace = str(gate_config["namespace"])

        def probe(info: ClusterInfo) -> list[NodeFacts]:
            groups = {e["name"] for e in placement_group_table().values()
                      if e["state"] != "REMOVED"}
            facts = []
            for node in info.nodes:
                name = f"skyport-{info.gate}-{info.cluster_id}-n{node.rank}"
                try:
                    job = ray.get(ray.get_actor(name, namespace=namespace).info.remote(),
                                  timeout=30)["job_id"]
                except (ValueError, ray.exceptions.RayError):
                    job = None
                pid = node.details.get("pid")
                agent = bool(pid) and _is_agent(int(pid))
                if agent or job is not None or node.details["placement_group"] in groups:
                    facts.append(NodeFacts(alive=agent, job_id=job or ""))
            return facts

        return probe


def _is_agent(pid: int) -> bool:
    """True if ``pid`` is a running Sky Port agent."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"skyport.agent" in argv and state not in ("Z", "X")


class TestRayGatePlacement:
    """What the ray gate adds to the suite: how it spreads nodes, and how it waits."""

    gate_config = TestRayGateConformance.gate_config
    gate = TestRayGateConformance.gate
    make_request = TestRayGateConformance.make_request

    def test_more_nodes_than_ray_nodes_spread_softly(
        self, gate: Gate, make_request: Callable[..., ClusterRequest],
    ) -> None:
        req = make_request(nodes=3)
        try:
            info = gate.create_cluster(req)
            assert info.state == "running", info.reason
            assert "(SPREAD) on 2 Ray node(s)" in info.reason
            assert {n.details["strategy"] for n in info.nodes} == {"SPREAD"}
        finally:
            gate.delete_cluster(req.cluster_id)

    def test_a_group_that_waits_too_long_is_removed(
        self, gate: Gate, make_request: Callable[..., ClusterRequest],
    ) -> None:
        from ray.util.placement_group import placement_group_table

        small = make_request()
        big = make_request(nodes=2, cpus_per_node=WORKER_CPUS)  # needs both workers whole
        try:
            gate.create_cluster(small)
            with pytest.raises(CapacityError, match=r"STRICT_SPREAD.*not placed within 3 s"):
                gate.create_cluster(big)
            name = f"skyport-rg-{big.cluster_id}"
            assert not [e for e in placement_group_table().values()
                        if e["name"] == name and e["state"] != "REMOVED"]
            assert big.cluster_id not in {c.cluster_id for c in gate.list_clusters()}
        finally:
            gate.delete_cluster(small.cluster_id)
            gate.delete_cluster(big.cluster_id)

    def test_another_ray_address_is_refused(self, gate_config: dict[str, object],
                                            tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="is not the Ray cluster"):
            make_gate("rg", "ray", {**gate_config, "address": "10.0.0.1:6379"}, tmp_path)
