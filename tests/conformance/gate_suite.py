"""The gate conformance suite: behaviour every gate must show.

A gate's test module subclasses ``GateConformance`` and provides these
pytest fixtures (function scope unless said otherwise)::

    gate            a Gate on a fresh state folder, with room for at least one
                    1-node, 1-cpu cluster and for at most ``fill_limit``
                    such clusters at once (so "full" can be reached)
    reopen_gate     () -> Gate: a *new* instance on the same state and config
                    (what a restarted control plane builds)
    make_request    (**overrides) -> ClusterRequest: a 1-node, 1-cpu request
                    with a fresh cluster id and job id on every call; any
                    ClusterRequest field may be overridden.  ``ca_pem`` must be
                    a real CA certificate (``ca_pem`` fixture below) and
                    ``control_url`` may point nowhere: agents keep retrying
    node_probe      (ClusterInfo) -> list[NodeFacts]: what the *outside world*
                    says about the cluster's nodes (processes, the cloud's
                    listing, Ray's placement) without trusting the gate's
                    own describe: whether each node is alive and which job it
                    is tagged with.  Must return [] once nothing is left.

Optional overrides: ``impossible_request`` (a request no flavor can ever
hold; default: 10,000 nodes x 10,000 cpus), class attribute ``fill_limit``
(default 16) and ``up_timeout_s`` (how long a created cluster may take to be
``running``, default 30).

Every cluster a test creates is deleted at the end, even when it fails
(``cleanup`` fixture), so one broken test does not starve the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from skyport import pki
from skyport.errors import CapacityError, GateError
from skyport.gate import ClusterInfo, ClusterRequest, Gate, GateFeature

__all__ = ["GateConformance", "NodeFacts", "ca_pem_for_tests"]


@dataclass(frozen=True)
class NodeFacts:
    alive: bool
    job_id: str


def ca_pem_for_tests(folder: Path) -> str:
    """A real CA certificate (agents check it when they start)."""
    pki_dir = folder / "pki"
    if not pki.ca_cert_path(pki_dir).exists():
        pki.init_ca(pki_dir)
    return pki.ca_cert_path(pki_dir).read_text()


class GateConformance:
    fill_limit = 16
    up_timeout_s = 30.0

    @pytest.fixture
    def impossible_request(self, make_request: Callable[..., ClusterRequest]) -> ClusterRequest:
        return make_request(nodes=10_000, cpus_per_node=10_000)

    @pytest.fixture
    def cleanup(self, gate: Gate) -> Iterator[list[str]]:
        created: list[str] = []
        yield created
        for cid in created:
            try:
                gate.delete_cluster(cid)
            except Exception:
                pass

    def _create(self, gate: Gate, request: ClusterRequest, cleanup: list[str]) -> ClusterInfo:
        cleanup.append(request.cluster_id)
        info = gate.create_cluster(request)
        deadline = time.monotonic() + self.up_timeout_s
        while info.state == "creating" and time.monotonic() < deadline:
            time.sleep(0.2)
            info = gate.describe_cluster(request.cluster_id)
        return info

    # -- the offer ---------------------------------------------------------------

    def test_flavors_are_sane(self, gate: Gate) -> None:
        flavors = gate.flavors()
        assert flavors, "a gate offers at least one flavor"
        names = [f.name for f in flavors]
        assert len(set(names)) == len(names), f"flavor names repeat: {names}"
        for f in flavors:
            assert f.cpus >= 1 and f.mem_mb >= 0 and f.gpus >= 0, f
            assert f.price_per_hour >= 0 and f.boot_s >= 0 and f.max_nodes >= 1, f

    def test_capacity_is_consistent(self, gate: Gate) -> None:
        cap = gate.capacity()
        assert 0 <= cap.free_cpus <= cap.total_cpus
        assert 0 <= cap.free_gpus <= cap.total_gpus
        assert cap.total_cpus >= 1

    # -- the cluster lifecycle ---------------------------------------------------------

    def test_create_describe_list_delete(
        self, gate: Gate, make_request: Callable[..., ClusterRequest],
        node_probe: Callable[[ClusterInfo], list[NodeFacts]], cleanup: list[str],
    ) -> None:
        req = make_request()
        free_before = gate.capacity().free_cpus
        info = self._create(gate, req, cleanup)
        assert info.state == "running", info.reason
        assert info.cluster_id == req.cluster_id and info.job_id == req.job_id
        assert info.gate == gate.name
        assert len(info.nodes) == req.nodes and all(n.alive for n in info.nodes)
        assert sorted(n.rank for n in info.nodes) == list(range(req.nodes))
        facts = node_probe(info)
        assert len(facts) == req.nodes
        assert all(f.alive for f in facts), facts
        assert {f.job_id for f in facts} == {req.job_id}
        listed = {c.cluster_id: c for c in gate.list_clusters()}
        assert req.cluster_id in listed and listed[req.cluster_id].job_id == req.job_id
        assert gate.capacity().free_cpus < free_before

        gate.delete_cluster(req.cluster_id)
        assert gate.describe_cluster(req.cluster_id).state == "gone"
        assert req.cluster_id not in {c.cluster_id for c in gate.list_clusters()}
        assert node_probe(info) == []
        assert gate.capacity().free_cpus == free_before

    def test_multi_node_cluster(
        self, gate: Gate, make_request: Callable[..., ClusterRequest],
        node_probe: Callable[[ClusterInfo], list[NodeFacts]], cleanup: list[str],
    ) -> None:
        if not gate.capabilities.supports(GateFeature.MULTI_NODE):
            pytest.skip("gate is single-node")
        req = make_request(nodes=2)
        info = self._create(gate, req, cleanup)
        assert info.state == "running", info.reason
        assert len({n.name for n in info.nodes}) == 2
        assert [f.alive for f in node_probe(info)] == [True, True]
        gate.delete_cluster(req.cluster_id)
        assert node_probe(info) == []

    def test_delete_is_idempotent(
        self, gate: Gate, make_request: Callable[..., ClusterRequest], cleanup: list[str],
    ) -> None:
        gate.delete_cluster("never-created-0")
        req = make_request()
        self._create(gate, req, cleanup)
        gate.delete_cluster(req.cluster_id)
        gate.delete_cluster(req.cluster_id)
        assert gate.describe_cluster(req.cluster_id).state == "gone"

    def test_describe_unknown_is_gone(self, gate: Gate) -> None:
        assert gate.describe_cluster("never-created-1").state == "gone"

    def test_new_instance_sees_and_deletes(
        self, gate: Gate, reopen_gate: Callable[[], Gate],
        make_request: Callable[..., ClusterRequest],
        node_probe: Callable[[ClusterInfo], list[NodeFacts]], cleanup: list[str],
    ) -> None:
        req = make_request()
        info = self._create(gate, req, cleanup)
        other = reopen_gate()
        assert req.cluster_id in {c.cluster_id for c in other.list_clusters()}
        seen = other.describe_cluster(req.cluster_id)
        assert seen.state == "running" and seen.job_id == req.job_id
        other.delete_cluster(req.cluster_id)
        assert gate.describe_cluster(req.cluster_id).state == "gone"
        assert node_probe(info) == []

    # -- failures ------------------------------------------------------------------

    def test_impossible_request_raises_and_leaks_nothing(
        self, gate: Gate, impossible_request: ClusterRequest, cleanup: list[str],
    ) -> None:
        cleanup.append(impossible_request.cluster_id)
        before = {c.cluster_id for c in gate.list_clusters()}
        with pytest.raises(GateError) as err:
            gate.create_cluster(impossible_request)
        assert not isinstance(err.value, CapacityError), "never fits is not 'full now'"
        assert str(err.value)
        assert {c.cluster_id for c in gate.list_clusters()} == before
        assert gate.describe_cluster(impossible_request.cluster_id).state == "gone"

    def test_capacity_error_when_full(
        self, gate: Gate, make_request: Callable[..., ClusterRequest], cleanup: list[str],
    ) -> None:
        made = []
        with pytest.raises(CapacityError):
            for _ in range(self.fill_limit + 1):
                req = make_request()
                cleanup.append(req.cluster_id)
                gate.create_cluster(req)
                made.append(req.cluster_id)
        assert made, "the gate had no room for even one cluster"
        listed = {c.cluster_id for c in gate.list_clusters()}
        assert listed == set(made), "a refused create left something behind"
        gate.delete_cluster(made[0])
        req = make_request()  # room again once a cluster is released
        cleanup.append(req.cluster_id)
        assert gate.create_cluster(req).state in ("creating", "running")
