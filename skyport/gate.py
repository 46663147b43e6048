"""The gate seam: how Sky Port reaches compute it does not own.

A gate plugin writes a handful of primitives (``flavors``, ``capacity``,
``create_cluster``, ``describe_cluster``, ``delete_cluster``,
``list_clusters``); retries with backoff, waiting and reaping are written
once, here, on top of them.  Gates are found through the entry-point group
``skyport.gates``; the built-ins are also known without it.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from skyport.errors import CapacityError, ConfigError, GateError

ClusterState = Literal["creating", "running", "failed", "gone"]


class GateConfig(BaseModel):
    """Base of every gate's config model."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class GateCapabilities:
    gpus: bool = False
    multi_node: bool = True
    warm_reuse: bool = False


@dataclass(frozen=True)
class Flavor:
    """A node shape a gate offers."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int = 0
    price_per_hour: float = 0.0
    boot_s: float = 0.0
    max_nodes: int = 1


@dataclass(frozen=True)
class Capacity:
    total_cpus: int
    free_cpus: int
    total_gpus: int = 0
    free_gpus: int = 0


@dataclass(frozen=True)
class ClusterRequest:
    """What a gate needs to build one job's cluster.

    ``token`` is the job's agent token: the gate hands it to the nodes'
    agents and keeps it nowhere else.  ``control_url`` and ``ca_pem`` let the
    agents dial out to the REST API and check its certificate.
    """

    cluster_id: str
    job_id: str
    owner: str
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    mem_mb: int | None
    flavor: str | None
    control_url: str
    ca_pem: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class NodeInfo:
    rank: int
    name: str
    alive: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterInfo:
    cluster_id: str
    job_id: str
    gate: str
    flavor: str
    state: ClusterState
    nodes: tuple[NodeInfo, ...] = ()
    created_at: float = 0.0
    price_per_hour: float = 0.0
    reason: str = ""


class Gate(abc.ABC):
    """A small ABC: the primitives every gate writes."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[GateConfig]] = GateConfig
    capabilities: ClassVar[GateCapabilities] = GateCapabilities()

    def __init__(self, name: str, config: GateConfig, state_dir: Any) -> None:
        self.name = name
        self.config = config
        self.state_dir = state_dir

    def gate_dir(self) -> Path:
        """This gate's own durable folder, created if missing.

        ``state_dir`` is a StateDir in the control plane; tests may pass a path.
        """
        if hasattr(self.state_dir, "gate_dir"):
            path = Path(self.state_dir.gate_dir(self.name))
        else:
            path = Path(self.state_dir) / "gates" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @abc.abstractmethod
    def flavors(self) -> list[Flavor]: ...

    @abc.abstractmethod
    def capacity(self) -> Capacity: ...

    @abc.abstractmethod
    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        """Start the nodes; raise CapacityError when they do not fit now."""

    @abc.abstractmethod
    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        """The cluster as the gate sees it; state 'gone' when it does not exist."""

    @abc.abstractmethod
    def delete_cluster(self, cluster_id: str) -> None:
        """Delete every node of the cluster; deleting a gone cluster is not an error."""

    @abc.abstractmethod
    def list_clusters(self) -> list[ClusterInfo]:
        """Every cluster this gate created and has not deleted."""

    # -- helpers written once, on the primitives ---------------------------

    def warm_idle_timeout_s(self) -> float:
        """How long a finished job's cluster may wait for the next job of its owner
        and shape (``skyport.core.warm``); 0 when this gate never keeps one.

        A gate that can keep nodes warm declares ``capabilities.warm_reuse`` and
        an ``idle_timeout_s`` in its config (0, the default, turns it off).
        """
        if not self.capabilities.warm_reuse:
            return 0.0
        return float(getattr(self.config, "idle_timeout_s", 0.0) or 0.0)

    def can_ever_fit(
        self,
        nodes: int,
        cpus_per_node: int,
        gpus_per_node: int,
        mem_mb: int | None,
        flavor: str | None = None,
    ) -> str | None:
        """None if some flavor can hold the request; else why not."""
        flavors = self.flavors()
        if flavor is not None:
            flavors = [f for f in flavors if f.name == flavor]
            if not flavors:
                known = ", ".join(f.name for f in self.flavors())
                return f"gate {self.name} has no flavor {flavor!r} (known: {known})"
        reasons = []
        for f in flavors:
            if f.cpus < cpus_per_node:
                reasons.append(f"{f.name} has {f.cpus} cpus per node")
            elif f.gpus < gpus_per_node:
                reasons.append(f"{f.name} has {f.gpus} GPUs per node")
            elif mem_mb is not None and f.mem_mb < mem_mb:
                reasons.append(f"{f.name} has {f.mem_mb} MB per node")
            elif f.max_nodes < nodes:
                reasons.append(f"{f.name} has at most {f.max_nodes} nodes")
            else:
                return None
        return f"gate {self.name}: " + "; ".join(reasons)

    def pick_flavor(
        self,
        cpus_per_node: int,
        gpus_per_node: int,
        mem_mb: int | None,
        nodes: int,
        flavor: str | None = None,
    ) -> Flavor:
        """The cheapest flavor that holds one node of the request."""
        fits = [
            f
            for f in self.flavors()
            if (flavor is None or f.name == flavor)
            and f.cpus >= cpus_per_node
            and f.gpus >= gpus_per_node
            and (mem_mb is None or f.mem_mb >= mem_mb)
            and f.max_nodes >= nodes
        ]
        if not fits:
            raise GateError(
                self.can_ever_fit(nodes, cpus_per_node, gpus_per_node, mem_mb, flavor)
                or "no flavor fits"
            )
        return min(fits, key=lambda f: (f.price_per_hour, f.cpus, f.gpus, f.mem_mb))


T = TypeVar("T")


def with_retries(
    op: Callable[[], T],
    *,
    attempts: int = 3,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
    retry_on: tuple[type[BaseException], ...] = (GateError,),
    no_retry_on: tuple[type[BaseException], ...] = (CapacityError,),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run a gate operation, retrying failures with exponential backoff."""
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return op()
        except no_retry_on:
            raise
        except retry_on:
            if attempt == attempts:
                raise
            sleep(delay)
            delay = min(delay * 2, max_backoff_s)
    raise AssertionError("unreachable")


BUILTIN_GATES = {
    "local": "gates.local:LocalGate",
    "libcloud": "gates.libcloud:LibcloudGate",
    "chaos": "gates.chaos:ChaosGate",
    "ray": "gates.ray:RayGate",
    "memory": "gates.memory:MemoryGate",
}


def gate_class(type_name: str) -> type[Gate]:
    """Find a gate plugin by type name: entry points first, then the built-ins."""
    target = None
    for ep in entry_points(group="skyport.gates"):
        if ep.name == type_name:
            target = ep.value
            break
    target = target or BUILTIN_GATES.get(type_name)
    if target is None:
        known = sorted({ep.name for ep in entry_points(group="skyport.gates")} | set(BUILTIN_GATES))
        raise ConfigError(
            f"unknown gate type {type_name!r} (known: {', '.join(known)};"
            " a third-party gate must be installed to be found)"
        )
    module_name, _, attr = target.partition(":")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"gate type {type_name!r} cannot be loaded: {exc}") from exc
    return getattr(module, attr)


def make_gate(name: str, type_name: str, config: dict[str, Any], state_dir: Any) -> Gate:
    cls = gate_class(type_name)
    try:
        cfg = cls.config_model.model_validate(config)
    except ValueError as exc:
        raise ConfigError(f"gate {name!r} ({type_name}) has a bad config: {exc}") from exc
    return cls(name, cfg, state_dir)
