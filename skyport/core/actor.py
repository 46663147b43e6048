"""Ray shells around the plain services: Core, Scheduler and Gate actors.

Each actor holds one service object and forwards calls; the logic lives in
``skyport.core.service``, ``skyport.scheduler`` and the gate plugins, where
tests can reach it without Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from skyport.config import StateDir
from skyport.core.service import CoreService, CoreSettings
from skyport.errors import GateError
from skyport.gate import Capacity, ClusterInfo, ClusterRequest, Flavor, make_gate, with_retries
from skyport.models import JobSpec, JobState
from skyport.pki import Identity
from skyport.remote import ActorProxy
from skyport.scheduler import PlanEntry, SchedulerService, UsageCharge
from skyport.storage import JobStorage
from skyport.store import JobStore
from skyport.timetable import Snapshot

NAMESPACE = "skyport"


@ray.remote(num_cpus=0, max_concurrency=16)
class GateActor:
    """One configured gate.  Threaded, so a slow create does not block a describe."""

    def __init__(self, name: str, type_name: str, config: dict[str, Any], home: str) -> None:
        self.gate = make_gate(name, type_name, config, StateDir(Path(home)))

    def flavors(self) -> list[Flavor]:
        return self.gate.flavors()

    def capacity(self) -> Capacity:
        return self.gate.capacity()

    def can_ever_fit(
        self,
        nodes: int,
        cpus_per_node: int,
        gpus_per_node: int,
        mem_mb: int | None,
        flavor: str | None,
    ) -> str | None:
        return self.gate.can_ever_fit(nodes, cpus_per_node, gpus_per_node, mem_mb, flavor)

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        try:
            return with_retries(lambda: self.gate.create_cluster(request))
        except Exception:
            # never leave half a cluster behind
            try:
                self.gate.delete_cluster(request.cluster_id)
            except Exception:
                pass
            raise

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        return self.gate.describe_cluster(cluster_id)

    def delete_cluster(self, cluster_id: str) -> None:
        with_retries(lambda: self.gate.delete_cluster(cluster_id))

    def list_clusters(self) -> list[ClusterInfo]:
        return self.gate.list_clusters()

    def warm_idle_timeout_s(self) -> float:
        return self.gate.warm_idle_timeout_s()

    # provider extras (``ex_*``) used to inject failures; GateError if the gate lacks one
    def ex_kill_node(self, cluster_id: str, rank: int) -> Any:
        return self._extra("kill_node")(cluster_id, rank)

    def ex_preempt(self, cluster_id: str, reclaim_after_s: float) -> Any:
        return self._extra("preempt")(cluster_id, reclaim_after_s)

    def _extra(self, name: str) -> Any:
        fn = getattr(self.gate, f"ex_{name}", None)
        if fn is None:
            raise GateError(f"gate {self.gate.name} ({self.gate.type_name}) has no ex_{name}")
        return fn


@ray.remote(num_cpus=0)
class SchedulerActor:
    def __init__(
        self, policy: str, policy_config: dict[str, Any], state_dir: str | None = None
    ) -> None:
        self.service = SchedulerService(policy, policy_config, state_dir=state_dir)

    def plan(self, snapshot: Snapshot, charges: list[UsageCharge]) -> list[PlanEntry]:
        return self.service.plan(snapshot, charges)

    def policy(self) -> str:
        return self.service.policy_name


@ray.remote(num_cpus=0, max_concurrency=64)
class CoreActor:
    """Async actor: agent and user calls interleave with the lifecycle loop."""

    def __init__(self, home: str, control_url: str, gate_names: list[str]) -> None:
        state = StateDir(Path(home))
        config = state.load_config()
        storage_url = config.storage_url or state.storage.as_uri()
        gates = {n: ActorProxy(ray.get_actor(f"gate:{n}", namespace=NAMESPACE)) for n in gate_names}
        scheduler = ray.get_actor("scheduler", namespace=NAMESPACE)

        async def planner(snapshot: Snapshot, charges: list[UsageCharge]) -> list[PlanEntry]:
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
        )

    async def start(self) -> dict[str, Any]:
        return await self.service.start()

    async def submit(self, who: Identity, spec: JobSpec, payload_b64: str | None) -> Any:
        return await self.service.submit(who, spec, payload_b64)

    async def get(self, who: Identity, job_id: str) -> Any:
        return await self.service.get(who, job_id)

    async def jobs(self, who: Identity, all_users: bool, states: list[JobState] | None) -> Any:
        return await self.service.jobs(who, all_users, states)

    async def cancel(self, who: Identity, job_id: str) -> Any:
        return await self.service.cancel(who, job_id)

    async def status(self) -> dict[str, Any]:
        return await self.service.status()

    async def gate_info(self) -> list[dict[str, Any]]:
        return await self.service.gate_info()

    async def timetable(self) -> dict[str, Any]:
        return await self.service.timetable()

    async def clusters(self, who: Identity) -> list[dict[str, Any]]:
        return await self.service.clusters(who)

    async def agent_auth(self, job_id: str, token: str) -> Any:
        return await self.service.agent_auth(job_id, token)

    async def agent_hello(self, job_id: str, token: str, rank: int, node_name: str) -> dict:
        return await self.service.agent_hello(job_id, token, rank, node_name)

    async def agent_heartbeat(self, job_id: str, token: str, rank: int) -> dict:
        return await self.service.agent_heartbeat(job_id, token, rank)

    async def agent_state(self, job_id: str, token: str, state: JobState, reason: str) -> Any:
        return await self.service.agent_state(job_id, token, state, reason)

    async def agent_exit(
        self, job_id: str, token: str, exit_code: int, timed_out: bool, reason: str
    ) -> Any:
        return await self.service.agent_exit(job_id, token, exit_code, timed_out, reason)

    async def reap(self) -> list[str]:
        return await self.service.reap()

    async def agent_idle_next(self, cluster_id: str, credential: str, rank: int,
                              wait_s: float) -> dict:
        return await self.service.agent_idle_next(cluster_id, credential, rank, wait_s)

    async def recovery_call(self, name: str, *args: Any) -> Any:
        return await self.service.recovery_call(name, *args)

    async def shutdown(self) -> None:
        await self.service.stop()

    # -- launches (skyport.core.launches) ---------------------------------------

    async def agent_launch_nodes(self, job_id: str, token: str) -> Any:
        return await self.service.agent_launch_nodes(job_id, token)

    async def agent_launch_create(
        self, job_id: str, token: str, node: int, argv: list[str], env: dict[str, str], cwd: str
    ) -> Any:
        return await self.service.agent_launch_create(job_id, token, node, argv, env, cwd)

    async def agent_launch_poll(self, job_id: str, token: str, node: int, wait_s: float) -> Any:
        return await self.service.agent_launch_poll(job_id, token, node, wait_s)

    async def agent_launch_output(
        self,
        job_id: str,
        token: str,
        launch_id: str,
        node: int,
        stream: str,
        offset: int,
        data: bytes,
    ) -> Any:
        return await self.service.agent_launch_output(
            job_id, token, launch_id, node, stream, offset, data
        )

    async def agent_launch_exit(
        self, job_id: str, token: str, launch_id: str, node: int, exit_code: int
    ) -> Any:
        return await self.service.agent_launch_exit(job_id, token, launch_id, node, exit_code)

    async def agent_launch_read(
        self, job_id: str, token: str, launch_id: str, offsets: dict[str, int], wait_s: float
    ) -> Any:
        return await self.service.agent_launch_read(job_id, token, launch_id, offsets, wait_s)

    async def agent_launch_cancel(self, job_id: str, token: str, launch_id: str) -> Any:
        return await self.service.agent_launch_cancel(job_id, token, launch_id)
