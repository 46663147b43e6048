"""The local gate runs the gate conformance suite."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skyport.agent.procfs import is_alive
from skyport.config import StateDir
from skyport.gate import ClusterInfo, Gate, make_gate
from tests.conformance.gate_suite import GateConformance, NodeFacts

pytestmark = pytest.mark.timeout(120)


class TestLocalGate(GateConformance):
    fill_limit = 2

    @pytest.fixture
    def reopen_gate(self, tmp_path: Path) -> Callable[[], Gate]:
        # no payload runs here, and pytest's 0700 tmp_path keeps payload users out
        config = {"cpus": 2, "mem_mb": 4096, "gpus": [], "max_nodes": 4, "kill_grace_s": 1.0,
                  "isolation": "none"}
        return lambda: make_gate("local", "local", config, StateDir(tmp_path / "home"))

    @pytest.fixture
    def gate(self, reopen_gate: Callable[[], Gate]) -> Iterator[Gate]:
        gate = reopen_gate()
        yield gate
        for info in gate.list_clusters():
            gate.delete_cluster(info.cluster_id)

    @pytest.fixture
    def node_probe(self, tmp_path: Path) -> Callable[[ClusterInfo], list[NodeFacts]]:
        """From the gate's record file and /proc, not from describe_cluster."""

        def probe(info: ClusterInfo) -> list[NodeFacts]:
            path = tmp_path / "home" / "gates" / "local" / "clusters" / f"{info.cluster_id}.json"
            try:
                record = json.loads(path.read_text())
            except FileNotFoundError:
                return [NodeFacts(alive=True, job_id="?") for n in info.nodes
                        if is_alive(n.details["pid"])]
            return [NodeFacts(alive=n["pid"] is not None and is_alive(n["pid"], n["start_time"]),
                              job_id=record["job_id"]) for n in record["nodes"]]

        return probe
