"""A gate whose clusters are records in memory: no processes, no machines.

``skyport.client.testing`` runs the real REST API and the real Core over it.
A created cluster is ``running`` at once and no agent starts; the gate keeps
each cluster's agent token (``ClusterRequest.token``, which a real gate hands
to its nodes) so that a test can play the cluster's agents through the real
agent routes.  Capacity is a pool of cores (and GPUs) that clusters take and
give back, so "not now" (``CapacityError``) happens as on a real gate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import Field

from skyport.errors import CapacityError, NotFoundError
from skyport.gate import (
    Capacity,
    ClusterInfo,
    ClusterRequest,
    Flavor,
    Gate,
    GateCapabilities,
    GateConfig,
    GateFeature,
    NodeInfo,
)

__all__ = ["MemoryCluster", "MemoryGate", "MemoryGateConfig"]


class MemoryGateConfig(GateConfig):
    """One flavor (``cpus``, ``gpus``, ``mem_mb`` per node) and a pool of ``total_cpus``."""

    cpus: int = Field(4, ge=1, description="cores per node")
    gpus: int = Field(0, ge=0, description="GPUs per node")
    mem_mb: int = Field(8192, ge=1, description="memory per node")
    max_nodes: int = Field(8, ge=1, le=4096)
    total_cpus: int | None = Field(None, ge=1, description="default: cpus x max_nodes")
    price_per_hour: float = Field(0.0, ge=0, description="per node")
    idle_timeout_s: float = Field(0.0, ge=0, le=86400)


@dataclass
class MemoryCluster:
    """What the gate remembers of a cluster, the agent token included (tests act with it)."""

    info: ClusterInfo
    token: str = field(repr=False)
    cpus: int
    gpus: int


class MemoryGate(Gate):
    type_name: ClassVar[str] = "memory"
    config_model: ClassVar[type[GateConfig]] = MemoryGateConfig
    capabilities: ClassVar[GateCapabilities] = GateCapabilities(unsupported={
        GateFeature.PREEMPT: "the memory gate has no preemption notices to send"})

    def __init__(self, name: str, config: GateConfig, state_dir: Any = None) -> None:
        super().__init__(name, config, state_dir)
        assert isinstance(config, MemoryGateConfig)
        self.cfg = config
        self._clusters: dict[str, MemoryCluster] = {}
        self._lock = threading.Lock()

    @property
    def _total_cpus(self) -> int:
        return self.cfg.total_cpus or self.cfg.cpus * self.cfg.max_nodes

    def flavors(self) -> list[Flavor]:
        c = self.cfg
        return [Flavor(name=f"mem-{c.cpus}", cpus=c.cpus, mem_mb=c.mem_mb, gpus=c.gpus,
                       price_per_hour=c.price_per_hour, max_nodes=c.max_nodes)]

    def capacity(self) -> Capacity:
        with self._lock:
            used = sum(m.cpus for m in self._clusters.values())
            used_gpus = sum(m.gpus for m in self._clusters.values())
        total_gpus = self.cfg.gpus * self.cfg.max_nodes
        return Capacity(total_cpus=self._total_cpus, free_cpus=self._total_cpus - used,
                        total_gpus=total_gpus, free_gpus=total_gpus - used_gpus)

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        flavor = self.pick_flavor(request.cpus_per_node, request.gpus_per_node, request.mem_mb,
                                  request.nodes, request.flavor)
        cpus, gpus = flavor.cpus * request.nodes, flavor.gpus * request.nodes
        with self._lock:
            if request.cluster_id in self._clusters:
                return self._clusters[request.cluster_id].info
            free = self._total_cpus - sum(m.cpus for m in self._clusters.values())
            if cpus > free:
                raise CapacityError(f"gate {self.name}: {cpus} cpus asked, {free} free")
            info = ClusterInfo(
                cluster_id=request.cluster_id, job_id=request.job_id, gate=self.name,
                flavor=flavor.name, state="running",
                nodes=tuple(NodeInfo(rank=r, name=f"{request.cluster_id}-{r}", alive=True)
                            for r in range(request.nodes)),
                created_at=time.time(), price_per_hour=flavor.price_per_hour * request.nodes)
            self._clusters[request.cluster_id] = MemoryCluster(info, request.token, cpus, gpus)
        return info

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        with self._lock:
            held = self._clusters.get(cluster_id)
        if held is None:
            return ClusterInfo(cluster_id=cluster_id, job_id="", gate=self.name, flavor="",
                               state="gone")
        return held.info

    def delete_cluster(self, cluster_id: str) -> None:
        with self._lock:
            self._clusters.pop(cluster_id, None)

    def list_clusters(self) -> list[ClusterInfo]:
        with self._lock:
            return [m.info for m in self._clusters.values()]

    # -- for tests: act as the cluster's agents, lose a node ---------------------------

    def cluster(self, cluster_id: str) -> MemoryCluster:
        with self._lock:
            held = self._clusters.get(cluster_id)
        if held is None:
            raise NotFoundError(f"gate {self.name} has no cluster {cluster_id}")
        return held

    def token(self, cluster_id: str) -> str:
        """The agent token the Core gave this cluster (its nodes' agents would hold it)."""
        return self.cluster(cluster_id).token

    def warm_idle_timeout_s(self) -> float:
        return self.cfg.idle_timeout_s

    def kill_node(self, cluster_id: str, rank: int) -> bool:
        with self._lock:
            held = self._clusters.get(cluster_id)
            if held is None or not 0 <= rank < len(held.info.nodes):
                return False
            nodes = tuple(replace(n, alive=False) if n.rank == rank else n
                          for n in held.info.nodes)
            held.info = replace(held.info, nodes=nodes)
        return True
