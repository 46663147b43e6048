"""The memory gate: clusters as records, capacity taken and given back, tokens kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from gates.memory import MemoryGate, MemoryGateConfig
from skyport.errors import CapacityError, NotFoundError
from skyport.gate import ClusterRequest, gate_class, make_gate


def _request(cluster_id: str, nodes: int = 1, cpus: int = 1) -> ClusterRequest:
    return ClusterRequest(cluster_id=cluster_id, job_id=f"job-{cluster_id}", owner="alice",
                          nodes=nodes, cpus_per_node=cpus, gpus_per_node=0, mem_mb=None,
                          flavor=None, control_url="https://x", ca_pem="",
                          token=f"tok-{cluster_id}")


def test_it_is_a_registered_gate_type(tmp_path: Path) -> None:
    assert gate_class("memory") is MemoryGate
    gate = make_gate("m", "memory", {"cpus": 2, "max_nodes": 2}, tmp_path)
    assert gate.type_name == "memory" and gate.capacity().total_cpus == 4


def test_clusters_take_and_give_back_capacity(tmp_path: Path) -> None:
    gate = MemoryGate("m", MemoryGateConfig(cpus=2, max_nodes=2), tmp_path)
    info = gate.create_cluster(_request("c1", nodes=2, cpus=1))
    assert info.state == "running" and [n.name for n in info.nodes] == ["c1-0", "c1-1"]
    assert gate.capacity().free_cpus == 0  # two 2-core nodes: the flavor, not the ask
    with pytest.raises(CapacityError, match="2 cpus asked, 0 free"):
        gate.create_cluster(_request("c2"))
    assert gate.token("c1") == "tok-c1"
    assert [c.cluster_id for c in gate.list_clusters()] == ["c1"]
    gate.delete_cluster("c1")
    gate.delete_cluster("c1")  # deleting a gone cluster is not an error
    assert gate.describe_cluster("c1").state == "gone" and gate.capacity().free_cpus == 4
    with pytest.raises(NotFoundError):
        gate.token("c1")


def test_a_killed_node_is_seen_dead(tmp_path: Path) -> None:
    gate = MemoryGate("m", MemoryGateConfig(), tmp_path)
    gate.create_cluster(_request("c1", nodes=2))
    assert gate.kill_node("c1", 1) and not gate.kill_node("nope", 0)
    assert [n.alive for n in gate.describe_cluster("c1").nodes] == [True, False]
