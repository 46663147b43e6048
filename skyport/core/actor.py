"""Ray shells around the plain services: Core, Scheduler and Gate actors.

Each actor holds one service object and forwards calls; the logic lives in
``skyport.core.service``, ``skyport.scheduler`` and the gate plugins, where
tests can reach it without Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import ray

from skyport.config import StateDir
from skyport.core.commands import Command
from skyport.core.service import CoreService, CoreSettings, GatePort
from skyport.gate import Capacity, ClusterInfo, ClusterRequest, Flavor, GateFeature
from skyport.gate.bootstrapcred import Exchanged
from skyport.gate.runner import GateDescription, GateRunner
from skyport.remote import ActorProxy
from skyport.scheduler import SchedulePlan, SchedulerService, UsageCharge
from skyport.storage import JobStorage
from skyport.store import JobStore
from skyport.timetable import Snapshot

NAMESPACE = "skyport"


@ray.remote(num_cpus=0, max_concurrency=16)  # type: ignore[call-overload]  # no max_concurrency in Ray's stubs
class GateActor:
    """One configured gate: a Ray shell around its ``GateRunner``, which holds every
    gate's validation, retries, cleanup, agent environment and feature checks.
    Threaded, so a slow create does not block a describe."""

    def __init__(self, name: str, type_name: str, config: dict[str, Any], home: str) -> None:
        self.runner = GateRunner.from_config(name, type_name, config, StateDir(Path(home)))

    def flavors(self) -> list[Flavor]:
        return self.runner.flavors()

    def capacity(self) -> Capacity:
        return self.runner.capacity()

    def type_name(self) -> str:
        """The gate's plugin type (``local``, ``ray``, ...), for ``skyport gates``."""
        return self.runner.gate.type_name

    def can_ever_fit(
        self,
        nodes: int,
        cpus_per_node: int,
        gpus_per_node: int,
        mem_mb: int | None,
        flavor: str | None,
    ) -> str | None:
        return self.runner.can_ever_fit(nodes, cpus_per_node, gpus_per_node, mem_mb, flavor)

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        return self.runner.create_cluster(request)

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        return self.runner.describe_cluster(cluster_id)

    def delete_cluster(self, cluster_id: str) -> None:
        self.runner.delete_cluster(cluster_id)

    def list_clusters(self) -> list[ClusterInfo]:
        return self.runner.list_clusters()

    def warm_idle_timeout_s(self) -> float:
        return self.runner.warm_idle_timeout_s()

    def supports(self, feature: GateFeature | str) -> bool:
        return self.runner.supports(feature)

    def describe(self) -> GateDescription:
        return self.runner.describe()

    def kill_node(self, cluster_id: str, rank: int) -> bool:
        return self.runner.kill_node(cluster_id, rank)

    def preempt(self, cluster_id: str, reclaim_after_s: float) -> float:
        return self.runner.preempt(cluster_id, reclaim_after_s)

    def exchange_bootstrap(self, credential: str) -> Exchanged:
        return self.runner.exchange_bootstrap(credential)


@ray.remote(num_cpus=0)
class SchedulerActor:
    def __init__(
        self, policy: str, policy_config: dict[str, Any], state_dir: str | None = None
    ) -> None:
        self.service = SchedulerService(policy, policy_config, state_dir=state_dir)

    def plan(self, snapshot: Snapshot, charges: list[UsageCharge]) -> SchedulePlan:
        return self.service.plan(snapshot, charges)

    def policy(self) -> str:
        return self.service.policy_name


# room for skyport.core.waiters.MAX_WAITERS pushed waits beside every other call
@ray.remote(num_cpus=0, max_concurrency=512)  # type: ignore[call-overload]  # no max_concurrency in Ray's stubs
class CoreActor:
    """Async actor: agent and user calls interleave with the lifecycle loop."""

    def __init__(self, home: str, control_url: str, gate_names: list[str]) -> None:
        state = StateDir(Path(home))
        config = state.load_config()
        storage_url = config.storage_url or state.storage.as_uri()
        # an ActorProxy answers every GatePort method (through __getattr__)
        gates = {n: cast(GatePort, ActorProxy(ray.get_actor(f"gate:{n}", namespace=NAMESPACE)))
                 for n in gate_names}
        scheduler = ray.get_actor("scheduler", namespace=NAMESPACE)

        async def planner(snapshot: Snapshot, charges: list[UsageCharge]) -> SchedulePlan:
            return await scheduler.plan.remote(snapshot, charges)

        self.service = CoreService(
            store=JobStore(state.db_path),
            storage=JobStorage(storage_url, config.storage_options),
            gates=gates,
            planner=planner,
            settings=CoreSettings(
                control_url=control_url,
                ca_pem=(state.pki / "ca.crt").read_text(),
                heartbeat_timeout_s=config.heartbeat_timeout_s,
            ),
            policy_name=config.policy,
            inputs=config.inputs,
            limits=config.limits,
        )

    async def start(self) -> dict[str, Any]:
        return await self.service.start()

    async def execute(self, command: Command) -> Any:
        """Every REST call: the command names the ``CoreService`` method that runs it."""
        return await command.run(self.service)

    async def shutdown(self) -> None:
        await self.service.stop()
