"""``GateRunner``: what every gate gets, written once on top of a plugin's primitives.

The control plane never drives a gate plugin directly: ``GateActor``
(``skyport.core.actor``) is a Ray shell around one ``GateRunner``, which

- validates a cluster request against the gate's flavors, totals and
  features before the plugin sees it (``NeverFitsError`` names the field,
  the value and what the gate allows);
- gives the agent its environment, from an allow-list
  (``skyport.gate.environment``), in ``ClusterRequest.agent_env``;
- retries creates and deletes with exponential backoff (``with_retries``);
  "full now" (``CapacityError``) and "never" (``NeverFitsError``) are not retried;
- never leaves half a cluster behind: a create that finally fails is
  followed by a delete of that cluster id;
- answers feature questions from the plugin's declaration
  (``Gate.capabilities``): ``supports``, ``check_features_are_supported``
  (an ``UnsupportedFeatureError`` naming gate, feature and reason), and the
  optional features themselves (``warm_idle_timeout_s``, ``kill_node``, ``preempt``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from skyport.errors import (
    CapacityError,
    ConfigError,
    GateError,
    NeverFitsError,
    UnsupportedFeatureError,
    ValidationError,
)
from skyport.gate import (
    Capacity,
    ClusterInfo,
    ClusterRequest,
    Flavor,
    Gate,
    GateFeature,
    make_gate,
    never_fits,
)
from skyport.gate.bootstrapcred import Exchanged
from skyport.gate.environment import agent_environment

__all__ = ["GateDescription", "GateRunner", "RetryPolicy", "with_retries"]

log = logging.getLogger("skyport.gate")

T = TypeVar("T")

# deterministic answers: asking again gives the same one
_NEVER_RETRIED: tuple[type[BaseException], ...] = (CapacityError, NeverFitsError,
                                                   UnsupportedFeatureError)


def with_retries(
    op: Callable[[], T],
    *,
    attempts: int = 3,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
    retry_on: tuple[type[BaseException], ...] = (GateError,),
    no_retry_on: tuple[type[BaseException], ...] = _NEVER_RETRIED,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run a gate operation, retrying failures with exponential backoff."""
    if attempts < 1:
        raise ConfigError(f"invalid attempts: {attempts!r} (at least 1)")
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


@dataclass(frozen=True)
class RetryPolicy:
    """How creates and deletes are retried: ``attempts`` tries in all, waiting
    ``backoff_s``, then twice as long each time, at most ``max_backoff_s``."""

    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"invalid attempts: {self.attempts!r} (at least 1)")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError(f"invalid backoff: {self.backoff_s!r}, {self.max_backoff_s!r} "
                              "(at least 0)")


@dataclass(frozen=True)
class GateDescription:
    """One gate as ``skyport gates`` shows it.

    ``features`` maps every ``GateFeature`` value to None (supported) or the
    reason it is not; ``capacity`` is None when it could not be read (``error``).
    """

    name: str
    type_name: str
    features: Mapping[str, str | None]
    capacity: Capacity | None
    flavors: tuple[Flavor, ...] = ()
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        cap = self.capacity
        return {
            "name": self.name, "type": self.type_name, "features": dict(self.features),
            "capacity": None if cap is None else {
                "total_cpus": cap.total_cpus, "free_cpus": cap.free_cpus,
                "total_gpus": cap.total_gpus, "free_gpus": cap.free_gpus},
            "flavors": [f.name for f in self.flavors], "error": self.error,
        }


# optional features a plugin serves with a method of its own
_FEATURE_METHODS: dict[GateFeature, str] = {
    GateFeature.WARM_REUSE: "warm_idle_timeout_s",
    GateFeature.KILL_NODE: "kill_node",
    GateFeature.PREEMPT: "preempt",
}


@dataclass
class GateRunner:
    """One gate plugin, with everything every gate gets.  Plain Python: tests drive it
    without Ray; ``sleep`` and ``environ`` are injectable for them."""

    gate: Gate
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    environ: Mapping[str, str] | None = None  # None: this process's environment

    def __post_init__(self) -> None:
        # a declared feature must be implemented: found now, not by a user's first drill
        for feature, method in _FEATURE_METHODS.items():
            if self.gate.capabilities.supports(feature) and \
                    getattr(type(self.gate), method) is getattr(Gate, method):
                raise ConfigError(
                    f"gate {self.name} ({self.type_name}) declares {feature.value} but does "
                    f"not implement {method}(); add it, or list {feature.value} in its "
                    "capabilities' unsupported features with a reason")

    @classmethod
    def from_config(cls, name: str, type_name: str, config: dict[str, Any], state_dir: Any,
                    **kwargs: Any) -> GateRunner:
        """The runner of a configured gate (``make_gate``)."""
        return cls(make_gate(name, type_name, config, state_dir), **kwargs)

    @property
    def name(self) -> str:
        return self.gate.name

    @property
    def type_name(self) -> str:
        return self.gate.type_name

    # -- the offer ----------------------------------------------------------------

    def flavors(self) -> list[Flavor]:
        return self.gate.flavors()

    def capacity(self) -> Capacity:
        return self.gate.capacity()

    def can_ever_fit(self, nodes: int, cpus_per_node: int, gpus_per_node: int,
                     mem_mb: int | None, flavor: str | None = None) -> str | None:
        """None if the gate can ever hold such a cluster; else why not."""
        why = never_fits(self.gate, nodes, cpus_per_node, gpus_per_node, mem_mb, flavor)
        return None if why is None else why.message

    def validate(self, request: ClusterRequest) -> None:
        """NeverFitsError naming the first field the gate can never hold."""
        self.gate.check_request(request)

    # -- features -----------------------------------------------------------------

    def supports(self, feature: GateFeature | str) -> bool:
        return self.gate.capabilities.supports(_feature(feature))

    def check_features_are_supported(self, *features: GateFeature | str) -> None:
        """UnsupportedFeatureError naming the gate, each missing feature and its reason."""
        caps = self.gate.capabilities
        missing = [f for f in map(_feature, features) if not caps.supports(f)]
        if not missing:
            return
        if len(missing) == 1:
            raise UnsupportedFeatureError(self.name, self.type_name, missing[0].value,
                                          caps.reason(missing[0]) or "")
        raise UnsupportedFeatureError(
            self.name, self.type_name, ", ".join(f.value for f in missing),
            "; ".join(f"{f.value}: {caps.reason(f)}" for f in missing))

    def warm_idle_timeout_s(self) -> float:
        """The gate's warm-reuse idle timeout; 0.0 when it has no warm reuse."""
        if not self.supports(GateFeature.WARM_REUSE):
            return 0.0
        return max(0.0, float(self.gate.warm_idle_timeout_s()))

    def kill_node(self, cluster_id: str, rank: int) -> bool:
        self.check_features_are_supported(GateFeature.KILL_NODE)
        return self.gate.kill_node(cluster_id, rank)

    def preempt(self, cluster_id: str, reclaim_after_s: float) -> float:
        self.check_features_are_supported(GateFeature.PREEMPT)
        return self.gate.preempt(cluster_id, reclaim_after_s)

    def exchange_bootstrap(self, credential: str) -> Exchanged:
        return self.gate.exchange_bootstrap(credential)

    def describe(self) -> GateDescription:
        """Name, type, features (with reasons) and capacity, for ``skyport gates``."""
        features = self.gate.capabilities.as_dict()
        try:
            capacity, flavors, error = self.capacity(), tuple(self.flavors()), ""
        except Exception as exc:  # noqa: BLE001 - a gate that cannot answer is still listed
            capacity, flavors, error = None, (), f"{type(exc).__name__}: {exc}"
        return GateDescription(name=self.name, type_name=self.type_name, features=features,
                               capacity=capacity, flavors=flavors, error=error)

    # -- clusters -----------------------------------------------------------------

    def agent_env(self) -> dict[str, str]:
        """The environment an agent of this gate starts with (an allow-list)."""
        return agent_environment(self.environ)

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        """Validate, hand the agent its environment, create with retries; on a final
        failure delete whatever part of the cluster was built, then raise."""
        self.validate(request)
        request = replace(request, agent_env=self.agent_env())
        try:
            return self._retried(lambda: self.gate.create_cluster(request))
        except BaseException as exc:
            self._delete_half_built(request.cluster_id, exc)
            raise

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        return self.gate.describe_cluster(cluster_id)

    def delete_cluster(self, cluster_id: str) -> None:
        self._retried(lambda: self.gate.delete_cluster(cluster_id))

    def list_clusters(self) -> list[ClusterInfo]:
        return self.gate.list_clusters()

    # -- internals ----------------------------------------------------------------

    def _retried(self, op: Callable[[], T]) -> T:
        r = self.retry
        return with_retries(op, attempts=r.attempts, backoff_s=r.backoff_s,
                            max_backoff_s=r.max_backoff_s, sleep=self.sleep)

    def _delete_half_built(self, cluster_id: str, cause: BaseException) -> None:
        """Never half a cluster: delete what a failed create left; the reaper gets what
        even this cannot delete, and the create's error says so."""
        try:
            self._retried(lambda: self.gate.delete_cluster(cluster_id))
        except Exception as exc:  # noqa: BLE001 - the create's error is the one to raise
            log.warning("gate %s: deleting half-built cluster %s failed: %s",
                        self.name, cluster_id, exc)
            cause.add_note(f"deleting the half-built cluster {cluster_id} failed too: {exc}")


def _feature(value: GateFeature | str) -> GateFeature:
    try:
        return GateFeature(value)
    except ValueError:
        allowed = ", ".join(f.value for f in GateFeature)
        raise ValidationError("feature", value, f"one of {allowed}") from None
