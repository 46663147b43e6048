"""The Core service over a real job store and storage, with a gate in memory: no Ray, no process.

What the machine decides must survive the service: persisted in one
transaction, read back by a second service on the same state (a control-plane
restart).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from skyport import tokens
from skyport.checkpoint import LATEST
from skyport.core.service import CoreService, CoreSettings
from skyport.errors import GateError
from skyport.gate import Capacity, ClusterInfo, ClusterRequest, Flavor, NodeInfo
from skyport.models import JobSpec, JobState, Resources
from skyport.pki import Identity
from skyport.scheduler import PlanEntry, SchedulePlan, SchedulerService, UsageCharge
from skyport.storage import JobStorage
from skyport.store import JobStore
from skyport.timetable import Snapshot

S = JobState
ALICE = Identity("alice", "user")


class Gate:
    """Clusters as records; every node alive."""

    def __init__(self) -> None:
        self.clusters: dict[str, ClusterRequest] = {}
        self.deleted: list[str] = []

    async def flavors(self) -> list[Flavor]:
        return [Flavor("small", cpus=4, mem_mb=4096, max_nodes=4)]

    async def capacity(self) -> Capacity:
        return Capacity(total_cpus=16, free_cpus=16)

    async def can_ever_fit(self, *args: object) -> str | None:
        return None

    async def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        self.clusters[request.cluster_id] = request
        return await self.describe_cluster(request.cluster_id)

    async def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        r = self.clusters[cluster_id]
        return ClusterInfo(cluster_id=cluster_id, job_id=r.job_id, gate="mem", flavor="small",
                           state="running", nodes=tuple(NodeInfo(i, f"n{i}", True)
                                                        for i in range(r.nodes)))

    async def delete_cluster(self, cluster_id: str) -> None:
        self.deleted.append(cluster_id)
        self.clusters.pop(cluster_id, None)

    async def list_clusters(self) -> list[ClusterInfo]:
        return [await self.describe_cluster(c) for c in self.clusters]

    async def warm_idle_timeout_s(self) -> float:
        return 0.0


async def plan_everything(snapshot: Snapshot, charges: list[UsageCharge]) -> SchedulePlan:
    return SchedulePlan([PlanEntry(job_id=str(q.id), pool="mem", start_s=snapshot.now_s,
                                   procs=q.procs, nodes=q.nodes, start_now=True)
                         for q in snapshot.queued])


def service(tmp_path: Path, gate: Gate) -> CoreService:
    return CoreService(JobStore(tmp_path / "jobs.db"),
                       JobStorage((tmp_path / "storage").as_uri()), {"mem": gate},
                       plan_everything, CoreSettings(control_url="https://cp", ca_pem="",
                                                     replan_interval_s=0.01))


async def until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def running_job(core: CoreService, gate: Gate) -> tuple[str, str]:
    """Submit a 2-node job, play its agents to RUNNING; (job id, token)."""
    job = await core.submit(ALICE, JobSpec(script="#!/bin/bash\ntrue\n",
                                           resources=Resources(nodes=2)))
    await until(lambda: gate.clusters, "the cluster to be created")
    token = next(iter(gate.clusters.values())).token
    for rank in (0, 1):
        await core.agent_hello(job.id, token, rank, f"n{rank}")
    await core.agent_state(job.id, token, S.RUNNING, "payload started")
    return job.id, token


def test_a_restart_with_an_open_checkpoint_completes_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        first = service(tmp_path, gate)
        await first.start()
        job_id, token = await running_job(first, gate)
        ck = await first.user_checkpoint(ALICE, job_id)
        first.storage.put(job_id, f"checkpoints/v{ck['version']}/shared/a", b"abc")
        await first.agent_checkpoint_part(job_id, token, ck["version"], ck["id"], 0,
                                          [{"path": f"v{ck['version']}/shared/a", "size": 3}])
        await first.stop()
        first.store.close()

        second = service(tmp_path, gate)  # the control plane comes back
        recovered = await second.start()
        assert recovered["adopted"] == [job_id]
        assert (await second.checkpoints(ALICE, job_id))["pending"] == ck["version"]
        beat = await second.agent_heartbeat(job_id, token, 1)
        assert beat.checkpoint is not None and beat.checkpoint.id == ck["id"]
        answer = await second.agent_checkpoint_part(
            job_id, token, ck["version"], ck["id"], 1,
            [{"path": f"v{ck['version']}/nodes/1/b", "size": 4}])
        assert answer["committed"] is True
        latest = json.loads(second.storage.get(job_id, LATEST))
        assert (latest["version"], latest["bytes"]) == (1, 7)
        assert second.store.get(job_id).checkpoint_version == 1
        assert second.store.open_checkpoints() == {}
        await second.stop()

    asyncio.run(scenario())


def test_every_terminal_transition_revokes_the_token_in_the_same_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        core = service(tmp_path, gate)
        await core.start()
        job_id, token = await running_job(core, gate)
        assert core.store.token_hash(job_id) == tokens.hash_token(token)
        await core.agent_exit(job_id, token, 0, False, "")
        job = core.store.get(job_id)
        assert job.state == S.SUCCEEDED and core.store.token_hash(job_id) is None
        await until(lambda: gate.deleted, "the cluster to be deleted")
        await core.stop()

    asyncio.run(scenario())


def test_lost_node_requeues_with_the_count_in_the_store(tmp_path: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        core = service(tmp_path, gate)
        await core.start()
        job_id, token = await running_job(core, gate)
        cluster = next(iter(gate.clusters))
        gate.clusters.pop(cluster)  # the gate no longer has it
        await until(lambda: core.store.get(job_id).restarts == 1, "the requeue")
        job = core.store.get(job_id)
        assert job.lost_attempts == ["node lost: the gate no longer has the cluster"]
        await core.stop()

    asyncio.run(scenario())


def test_a_bootstrap_credential_is_exchanged_only_for_its_own_live_job(tmp_path: Path) -> None:
    from skyport.errors import AuthenticationError, PermissionDeniedError
    from skyport.gate.bootstrapcred import Exchanged

    async def scenario() -> None:
        gate = Gate()
        core = CoreService(JobStore(tmp_path / "jobs.db"),
                           JobStorage((tmp_path / "storage").as_uri()), {"mem": gate},
                           plan_everything, CoreSettings(control_url="", ca_pem="",
                                                         replan_interval_s=0.01))
        await core.start()
        job_id, token = await running_job(core, gate)

        async def exchange(credential: str) -> Exchanged:
            if credential != "spb.mem.good":
                raise AuthenticationError("this bootstrap credential reaches nothing")
            return Exchanged(job_id, 1, token)

        gate.exchange_bootstrap = exchange  # type: ignore[attr-defined]
        answer = await core.bootstrap_exchange("spb.mem.good", job_id, 1)
        assert answer["token"] == token
        for credential, job, rank in [("spb.mem.forged", job_id, 1),  # not issued
                                      ("spb.other.good", job_id, 1),  # no such gate
                                      ("not-a-credential", job_id, 1),
                                      ("spb.mem.good", job_id, 0),  # another node's
                                      ("spb.mem.good", "other", 1)]:  # another job's
            try:
                await core.bootstrap_exchange(credential, job, rank)
                raise AssertionError(f"{credential} {job} {rank} was exchanged")
            except AuthenticationError:
                pass
        await core.agent_exit(job_id, token, 0, False, "")  # the attempt is over
        try:
            await core.bootstrap_exchange("spb.mem.good", job_id, 1)
            raise AssertionError("an ended job's token was handed out")
        except PermissionDeniedError:
            pass
        await core.stop()

    asyncio.run(scenario())


async def real_scheduler(snapshot: Snapshot, charges: list[UsageCharge]) -> SchedulePlan:
    return SchedulerService("fcfs").plan(snapshot, charges)


def test_a_job_whose_only_gate_does_not_answer_waits_as_gate_unhealthy(tmp_path: Path) -> None:
    class SickGate(Gate):
        async def capacity(self) -> Capacity:
            raise GateError("the cloud's API answers 503")

    async def scenario() -> None:
        core = CoreService(JobStore(tmp_path / "jobs.db"),
                           JobStorage((tmp_path / "storage").as_uri()),
                           {"mem": Gate(), "sick": SickGate()}, real_scheduler,
                           CoreSettings(control_url="", ca_pem="", replan_interval_s=0.01))
        await core.start()
        job = await core.submit(ALICE, JobSpec(script="#!/bin/bash\ntrue\n", gate="sick"))
        for _ in range(500):  # until a planning pass has seen the job
            seen = await core.get(ALICE, job.id)
            if seen.wait_reason not in (None, "Unplanned"):
                break
            await asyncio.sleep(0.01)
        assert (seen.state, seen.wait_reason) == (S.QUEUED, "GateUnhealthy"), seen
        assert "sick" in (seen.wait_detail or "")
        await core.stop()

    asyncio.run(scenario())


def test_a_queued_job_that_no_gate_can_hold_any_more_is_ended(tmp_path: Path) -> None:
    class ShrinkingGate(Gate):
        total = 16

        async def capacity(self) -> Capacity:
            return Capacity(total_cpus=self.total, free_cpus=self.total)

    async def never(snapshot: Snapshot, charges: list[UsageCharge]) -> SchedulePlan:
        return SchedulerService("fcfs").plan(snapshot, charges) if gate.total < 16 \
            else SchedulePlan([])  # nothing starts while the gate is whole

    gate = ShrinkingGate()

    async def scenario() -> None:
        core = CoreService(JobStore(tmp_path / "jobs.db"),
                           JobStorage((tmp_path / "storage").as_uri()), {"mem": gate}, never,
                           CoreSettings(control_url="", ca_pem="", replan_interval_s=0.01))
        await core.start()
        job = await core.submit(ALICE, JobSpec(script="#!/bin/bash\ntrue\n",
                                               resources=Resources(nodes=2, cpus_per_node=4)))
        gate.total = 4  # the gate shrank: 8 cores will never be there again
        await until(lambda: core.store.get(job.id).state.is_terminal(), "the job to be ended")
        ended = core.store.get(job.id)
        assert ended.state == S.CANCELLED and ended.reason.startswith("can never run: "), ended
        await core.stop()

    asyncio.run(scenario())


def test_a_long_poll_of_an_ended_attempt_never_claims_the_next_attempts_launch(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        gate = Gate()
        core = service(tmp_path, gate)
        await core.start()
        job_id, old = await running_job(core, gate)
        polling = asyncio.ensure_future(core.agent_launch_poll(job_id, old, 0, 5.0))
        await asyncio.sleep(0.05)  # the old attempt's node 0 waits for work
        new = "next-attempt-token"
        core.store.update(job_id, token_hash=tokens.hash_token(new))  # a requeue's new attempt
        launch = await core.agent_launch_create(job_id, new, 0, ["hydra_pmi_proxy"], {}, "/")
        answer = await asyncio.wait_for(polling, 10)
        assert answer == {"start": [], "cancel": [], "stop": True}
        claimed = await core.agent_launch_poll(job_id, new, 0, 0.0)
        assert [o["launch_id"] for o in claimed["start"]] == [launch["launch_id"]]
        await core.stop()

    asyncio.run(scenario())
