"""``ChaosGate``: any gate, with a given fraction of creates and deletes failing.

For rehearsals and tests of the failure paths (retries, re-planning,
reaping)::

    {"name": "flaky", "type": "chaos", "config": {
        "inner": {"type": "local", "config": {"cpus": 8}},
        "create_failure_rate": 0.3, "delete_failure_rate": 0.3, "seed": 7}}

A failed create raises ``GateError`` either before the inner gate is asked
(nothing is left) or *after* the inner gate built the cluster
(``leave_behind_fraction`` of the failures, default half), which is then
left behind on purpose: a half-created cluster the system must clean up.
A failed delete raises before the inner gate deletes anything.
Everything else (flavors, capacity, describe, list, features) is the inner gate's;
the inner gate gets the chaos gate's name, so its state folder is
``gates/<name>/``.  The draws come from one seeded generator: the same seed
and the same sequence of calls fail the same way.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from skyport.errors import GateError
from skyport.gate import (
    Capacity,
    ClusterInfo,
    ClusterRequest,
    Flavor,
    Gate,
    GateConfig,
    make_gate,
)

__all__ = ["ChaosGate", "ChaosGateConfig"]


class InnerGate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    config: dict[str, Any] = Field(default_factory=dict)


class ChaosGateConfig(GateConfig):
    inner: InnerGate
    create_failure_rate: float = Field(0.0, ge=0.0, le=1.0)
    delete_failure_rate: float = Field(0.0, ge=0.0, le=1.0)
    leave_behind_fraction: float = Field(0.5, ge=0.0, le=1.0,
                                         description="of failed creates, those that fail "
                                         "after the inner gate built the cluster")
    seed: int | None = None


class ChaosGate(Gate):
    type_name = "chaos"
    config_model = ChaosGateConfig

    def __init__(self, name: str, config: ChaosGateConfig, state_dir: Any) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        if config.inner.type == self.type_name:
            raise GateError(f"gate {name}: a chaos gate cannot wrap another chaos gate")
        self.inner = make_gate(name, config.inner.type, config.inner.config, state_dir)
        self.capabilities = self.inner.capabilities  # type: ignore[misc]
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.injected = {"create": 0, "create_left_behind": 0, "delete": 0}

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def flavors(self) -> list[Flavor]:
        return self.inner.flavors()

    def capacity(self) -> Capacity:
        return self.inner.capacity()

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        draw = self._draw()
        rate = self.cfg.create_failure_rate
        if draw < rate * (1.0 - self.cfg.leave_behind_fraction):
            self.injected["create"] += 1
            raise GateError(f"gate {self.name}: injected create failure for cluster "
                            f"{request.cluster_id} (chaos, before any node was made)")
        info = self.inner.create_cluster(request)
        if draw < rate:
            self.injected["create_left_behind"] += 1
            raise GateError(f"gate {self.name}: injected create failure for cluster "
                            f"{request.cluster_id} (chaos, nodes left behind)")
        return info

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        return self.inner.describe_cluster(cluster_id)

    def delete_cluster(self, cluster_id: str) -> None:
        if self._draw() < self.cfg.delete_failure_rate:
            self.injected["delete"] += 1
            raise GateError(f"gate {self.name}: injected delete failure for cluster "
                            f"{cluster_id} (chaos)")
        self.inner.delete_cluster(cluster_id)

    def list_clusters(self) -> list[ClusterInfo]:
        return self.inner.list_clusters()

    # features: the inner gate's (``capabilities`` is the inner gate's declaration)

    def warm_idle_timeout_s(self) -> float:
        return self.inner.warm_idle_timeout_s()

    def kill_node(self, cluster_id: str, rank: int) -> bool:
        return self.inner.kill_node(cluster_id, rank)

    def preempt(self, cluster_id: str, reclaim_after_s: float) -> float:
        return self.inner.preempt(cluster_id, reclaim_after_s)
