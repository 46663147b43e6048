"""The gate seam: how Sky Port reaches compute it does not own.

A gate plugin writes a handful of primitives (``flavors``, ``capacity``,
``create_cluster``, ``describe_cluster``, ``delete_cluster``,
``list_clusters``, and the optional features it declares) and nothing else:
request validation, retries with backoff, half-cluster cleanup, the agent's
environment and feature checks are written once, in ``skyport.gate.runner``
(``GateRunner``), which is what the control plane drives.  Gates are found
through the entry-point group ``skyport.gates``; the built-ins are also known
without it (``skyport.registry``).

Submodules: ``runner`` (GateRunner, with_retries), ``environment`` (the
agent's environment, an allow-list), ``records`` (durable cluster records).
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from skyport.errors import (
    AuthenticationError,
    ConfigError,
    GateError,
    NeverFitsError,
    UnsupportedFeatureError,
)
from skyport.gate.bootstrapcred import Exchanged
from skyport.gate.environment import agent_environment
from skyport.registry import PluginRegistry

__all__ = [
    "BUILTIN_GATES", "CLUSTER_ID_RE", "Capacity", "ClusterInfo", "ClusterRequest",
    "ClusterState", "Flavor", "Gate", "GateCapabilities", "GateConfig", "GateFeature",
    "NodeInfo", "cheapest_flavor", "gate_class", "known_gate_types", "make_gate", "never_fits",
]

ClusterState = Literal["creating", "running", "failed", "gone"]


class GateConfig(BaseModel):
    """Base of every gate's config model."""

    model_config = ConfigDict(extra="forbid")


class GateFeature(enum.StrEnum):
    """What a gate may or may not offer beyond the primitives."""

    GPUS = "gpus"
    MULTI_NODE = "multi_node"
    WARM_REUSE = "warm_reuse"  # a finished job's cluster may serve the next one
    KILL_NODE = "kill_node"  # ``kill_node``: a node dies on demand (failure drills)
    PREEMPT = "preempt"  # ``preempt``: the cloud takes a cluster back (failure drills)


_NOT_DECLARED = "the gate plugin does not declare it"


@dataclass(frozen=True)
class GateCapabilities:
    """A gate's features: every feature is supported except those in ``unsupported``,
    each with the reason a user reads when a job or a command needs it.

    The default (a plugin that declares nothing) is a multi-node gate without
    GPUs, warm reuse or failure injection.
    """

    unsupported: Mapping[GateFeature, str] = field(default_factory=lambda: {
        GateFeature.GPUS: _NOT_DECLARED, GateFeature.WARM_REUSE: _NOT_DECLARED,
        GateFeature.KILL_NODE: _NOT_DECLARED, GateFeature.PREEMPT: _NOT_DECLARED})

    def __post_init__(self) -> None:
        for feature, reason in self.unsupported.items():
            if not isinstance(feature, GateFeature) or not reason:
                raise ConfigError(f"gate capabilities: unsupported[{feature!r}] needs a "
                                  f"GateFeature key and a reason (got {reason!r})")
        # read-only: one class attribute is shared by every instance of a plugin
        object.__setattr__(self, "unsupported", MappingProxyType(dict(self.unsupported)))

    def __reduce__(self) -> tuple[Any, ...]:
        # a mappingproxy does not pickle; capabilities cross Ray with a chaos gate's config
        return (GateCapabilities, (dict(self.unsupported),))

    def supports(self, feature: GateFeature) -> bool:
        return feature not in self.unsupported

    def reason(self, feature: GateFeature) -> str | None:
        """Why ``feature`` is unsupported; None when it is supported."""
        return self.unsupported.get(feature)

    def as_dict(self) -> dict[str, str | None]:
        """Every feature: None when supported, else the reason (for ``skyport gates``)."""
        return {f.value: self.reason(f) for f in GateFeature}


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
    agents dial out to the REST API and check its certificate.  ``agent_env``
    is the environment of an agent the gate starts as a process of this
    machine's image (local, Ray): the runner fills it from an allow-list
    (``skyport.gate.environment``); a gate never passes its own environment on.
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
    agent_env: Mapping[str, str] = field(default_factory=dict, repr=False)


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

    def agent_env(self, request: ClusterRequest) -> dict[str, str]:
        """The environment of an agent this gate starts on this machine's image: the
        runner's allow-listed one (``request.agent_env``), or, for a gate driven
        without a runner (tests), the same allow-list applied here."""
        return dict(request.agent_env) if request.agent_env else agent_environment()

    # -- optional features: declared in ``capabilities``, reached through the runner --

    def warm_idle_timeout_s(self) -> float:
        """How long a finished job's cluster may wait for the next job of its owner and
        shape (``skyport.core.warm``); only asked of a gate with ``WARM_REUSE``."""
        return 0.0

    def kill_node(self, cluster_id: str, rank: int) -> bool:
        """Kill one node as if its machine died (``KILL_NODE``); True when it was alive."""
        raise self.unsupported(GateFeature.KILL_NODE)

    def preempt(self, cluster_id: str, reclaim_after_s: float) -> float:
        """Take the cluster back ``reclaim_after_s`` from now (``PREEMPT``); the epoch time
        of the reclaim."""
        raise self.unsupported(GateFeature.PREEMPT)

    def exchange_bootstrap(self, credential: str) -> Exchanged:
        """A node's one-time bootstrap credential for its job token (gates whose user-data
        carries one, ``skyport.gate.bootstrapcred``); a gate that issues none knows none."""
        raise AuthenticationError("this bootstrap credential reaches nothing")

    def unsupported(self, feature: GateFeature) -> UnsupportedFeatureError:
        return UnsupportedFeatureError(
            self.name, self.type_name, feature.value,
            self.capabilities.reason(feature) or "the gate plugin does not implement it")

    # -- helpers written once, on the primitives ---------------------------

    def can_ever_fit(
        self,
        nodes: int,
        cpus_per_node: int,
        gpus_per_node: int,
        mem_mb: int | None,
        flavor: str | None = None,
    ) -> str | None:
        """None if some flavor can hold the request; else why not."""
        why = never_fits(self, nodes, cpus_per_node, gpus_per_node, mem_mb, flavor)
        return None if why is None else why.message

    def check_request(self, request: ClusterRequest) -> None:
        """NeverFitsError for a request this gate can never hold (CapacityError is for
        "not now").  The runner runs it before every create; a plugin may run it again
        where a bad request would do harm (a cluster id used as a folder name)."""
        why = never_fits(self, request.nodes, request.cpus_per_node, request.gpus_per_node,
                         request.mem_mb, request.flavor, cluster_id=request.cluster_id)
        if why is not None:
            raise why

    def pick_flavor(
        self,
        cpus_per_node: int,
        gpus_per_node: int,
        mem_mb: int | None,
        nodes: int,
        flavor: str | None = None,
    ) -> Flavor:
        """The cheapest flavor that holds one node of the request."""
        best = cheapest_flavor(self.flavors(), cpus_per_node, gpus_per_node, mem_mb, nodes,
                               flavor)
        if best is None:
            raise never_fits(self, nodes, cpus_per_node, gpus_per_node, mem_mb, flavor) \
                or GateError(f"gate {self.name}: no flavor fits")
        return best


def cheapest_flavor(
    flavors: Sequence[Flavor],
    cpus_per_node: int,
    gpus_per_node: int,
    mem_mb: int | None,
    nodes: int,
    flavor: str | None = None,
) -> Flavor | None:
    """The cheapest of ``flavors`` that holds one node of the request (what
    ``Gate.pick_flavor`` gives, and what the planner prices a job at); None if none does."""
    fits = [
        f
        for f in flavors
        if (flavor is None or f.name == flavor)
        and f.cpus >= cpus_per_node
        and f.gpus >= gpus_per_node
        and (mem_mb is None or f.mem_mb >= mem_mb)
        and f.max_nodes >= nodes
    ]
    return min(fits, key=lambda f: (f.price_per_hour, f.cpus, f.gpus, f.mem_mb), default=None)


# a cluster id becomes folder, node and actor names: keep it to safe characters
CLUSTER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def never_fits(
    gate: Gate,
    nodes: int,
    cpus_per_node: int,
    gpus_per_node: int,
    mem_mb: int | None,
    flavor: str | None = None,
    cluster_id: str | None = None,
) -> NeverFitsError | None:
    """The first field of a request that ``gate`` can never hold, as an error; else None.

    One rule for every gate: the sizes themselves, the gate's features
    (``MULTI_NODE``, ``GPUS``), its flavors (one node must fit one flavor, the
    node count that flavor's ``max_nodes``) and its totals (all nodes at once
    must fit the gate's total cpus and GPUs).
    """
    def bad(field_name: str, value: Any, allowed: str) -> NeverFitsError:
        return NeverFitsError(gate.name, field_name, value, allowed)

    if cluster_id is not None and not CLUSTER_ID_RE.match(cluster_id):
        return bad("cluster_id", cluster_id, "1-128 letters, digits, '_', '.', '-'")
    if nodes < 1:
        return bad("nodes", nodes, "at least 1")
    if cpus_per_node < 1:
        return bad("cpus_per_node", cpus_per_node, "at least 1")
    if gpus_per_node < 0:
        return bad("gpus_per_node", gpus_per_node, "at least 0")
    if mem_mb is not None and mem_mb < 0:
        return bad("mem_mb", mem_mb, "at least 0")
    caps = gate.capabilities
    if nodes > 1 and not caps.supports(GateFeature.MULTI_NODE):
        return bad("nodes", nodes, f"1: {caps.reason(GateFeature.MULTI_NODE)}")
    if gpus_per_node > 0 and not caps.supports(GateFeature.GPUS):
        return bad("gpus_per_node", gpus_per_node, f"0: {caps.reason(GateFeature.GPUS)}")
    offered = gate.flavors()
    if not offered:
        return bad("flavor", flavor, "the gate offers no flavor now")
    candidates = offered
    if flavor is not None:
        candidates = [f for f in offered if f.name == flavor]
        if not candidates:
            return bad("flavor", flavor, "one of " + ", ".join(f.name for f in offered))
    checks: list[tuple[str, Any, str, Any]] = [
        ("cpus_per_node", cpus_per_node, "cpus", lambda f: f.cpus >= cpus_per_node),
        ("gpus_per_node", gpus_per_node, "gpus", lambda f: f.gpus >= gpus_per_node),
        ("mem_mb", mem_mb, "mem_mb", lambda f: mem_mb is None or f.mem_mb >= mem_mb),
        ("nodes", nodes, "max_nodes", lambda f: f.max_nodes >= nodes),
    ]
    narrowed = False
    for field_name, value, attr, holds in checks:
        fitting = [f for f in candidates if holds(f)]
        if not fitting:
            most = max(getattr(f, attr) for f in candidates)
            among = " on a flavor that holds the other fields" if narrowed else ""
            per = " per node" if attr != "max_nodes" else ""
            return bad(field_name, value, f"at most {most}{per}{among}; flavors: "
                       + ", ".join(_flavor_text(f) for f in candidates))
        narrowed = narrowed or len(fitting) < len(candidates)
        candidates = fitting
    cap = gate.capacity()
    if nodes * cpus_per_node > cap.total_cpus:
        return bad("nodes x cpus_per_node", nodes * cpus_per_node,
                   f"at most {cap.total_cpus} cpus in all")
    if nodes * gpus_per_node > cap.total_gpus:
        return bad("nodes x gpus_per_node", nodes * gpus_per_node,
                   f"at most {cap.total_gpus} GPUs in all")
    return None


def _flavor_text(f: Flavor) -> str:
    return f"{f.name} ({f.cpus} cpus, {f.gpus} GPUs, {f.mem_mb} MB, {f.max_nodes} nodes)"


BUILTIN_GATES = {
    "local": "gates.local:LocalGate",
    "libcloud": "gates.libcloud:LibcloudGate",
    "chaos": "gates.chaos:ChaosGate",
    "ray": "gates.ray:RayGate",
    "memory": "gates.memory:MemoryGate",
}


_REGISTRY: PluginRegistry[Gate] = PluginRegistry(
    group="skyport.gates", kind="gate type", base=Gate, builtins=BUILTIN_GATES,
    error=ConfigError, field_name="type")


def gate_class(type_name: str) -> type[Gate]:
    """Find a gate plugin by type name: entry points first, then the built-ins."""
    return _REGISTRY.load(type_name)


def known_gate_types() -> dict[str, str]:
    """Every gate type name with the ``module:Class`` it loads."""
    return _REGISTRY.known()


def make_gate(name: str, type_name: str, config: dict[str, Any], state_dir: Any) -> Gate:
    cls = gate_class(type_name)
    try:
        cfg = cls.config_model.model_validate(config)
    except ValueError as exc:
        raise ConfigError(f"gate {name!r} ({type_name}) has a bad config: {exc}") from exc
    return cls(name, cfg, state_dir)
