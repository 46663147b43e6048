"""The chaos gate: with zero rates it is its inner gate (so it passes the suite);
with rates it fails that fraction of calls and can leave clusters behind."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gates.chaos import ChaosGate
from skyport.config import StateDir
from skyport.errors import GateError
from skyport.gate import ClusterInfo, ClusterRequest, Gate, make_gate
from tests.conformance.gate_suite import GateConformance, NodeFacts

pytestmark = pytest.mark.timeout(120)

INNER = {"type": "local", "config": {"cpus": 2, "mem_mb": 4096, "gpus": [], "max_nodes": 4,
                                     "isolation": "none",
                                     "kill_grace_s": 1.0}}


class TestChaosGateWithoutChaos(GateConformance):
    fill_limit = 2

    @pytest.fixture
    def reopen_gate(self, tmp_path: Path) -> Callable[[], Gate]:
        return lambda: make_gate("flaky", "chaos", {"inner": INNER}, StateDir(tmp_path / "h"))

    @pytest.fixture
    def gate(self, reopen_gate: Callable[[], Gate]) -> Iterator[Gate]:
        gate = reopen_gate()
        yield gate
        for info in gate.list_clusters():
            gate.delete_cluster(info.cluster_id)

    @pytest.fixture
    def node_probe(self) -> Callable[[ClusterInfo], list[NodeFacts]]:
        from skyport.agent.procfs import is_alive

        def probe(info: ClusterInfo) -> list[NodeFacts]:
            return [NodeFacts(alive=True, job_id=info.job_id) for n in info.nodes
                    if is_alive(n.details["pid"])]

        return probe


def test_failure_rates_are_roughly_kept_and_seeded(
    tmp_path: Path, make_request: Callable[..., ClusterRequest]
) -> None:
    config = {"inner": INNER, "create_failure_rate": 0.5, "delete_failure_rate": 0.5,
              "seed": 3}
    gate = make_gate("flaky", "chaos", config, StateDir(tmp_path / "h"))
    assert isinstance(gate, ChaosGate)
    outcomes = []
    for _ in range(20):
        req = make_request()
        try:
            gate.create_cluster(req)
            outcomes.append("ok")
        except GateError as exc:
            outcomes.append("left" if "left behind" in exc.message else "none")
        while gate.list_clusters():
            try:
                gate.delete_cluster(gate.list_clusters()[0].cluster_id)
            except GateError:
                outcomes.append("delete-failed")
    assert 3 <= outcomes.count("ok") <= 17
    assert outcomes.count("left") >= 1 and outcomes.count("none") >= 1
    assert "delete-failed" in outcomes
    again = make_gate("flaky2", "chaos", config, StateDir(tmp_path / "h2"))
    same = random.Random(3)
    assert [again._draw() for _ in range(5)] == [same.random() for _ in range(5)]
