"""The warm pool without Ray: who may get a parked cluster, and what an idle credential reaches."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from skyport import tokens
from skyport.core.warm import WarmPool
from skyport.errors import PermissionDeniedError
from skyport.gate import ClusterInfo, NodeInfo
from skyport.models import JobState
from skyport.script import build_spec
from skyport.store import JobStore

S = JobState
SHAPE = "#!/bin/bash\n#SKYPORT --nodes=2 --cpus-per-node=2\ntrue\n"


class Gate:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def warm_idle_timeout_s(self) -> float:
        return 60.0

    async def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        return ClusterInfo(cluster_id=cluster_id, job_id="", gate="local", flavor="local",
                           state="running", nodes=(NodeInfo(0, "n0", True),
                                                   NodeInfo(1, "n1", True)))

    async def delete_cluster(self, cluster_id: str) -> None:
        self.deleted.append(cluster_id)


def _finished(store: JobStore, job_id: str, owner: str) -> None:
    store.add(job_id, owner, build_spec(SHAPE))
    store.transition(job_id, S.SCHEDULED, "", gate="local")
    store.transition(job_id, S.PROVISIONING, "", cluster_id=f"{job_id}-0",
                     token_hash=tokens.hash_token("old"))
    for state in (S.STAGING_IN, S.RUNNING, S.STAGING_OUT, S.SUCCEEDED):
        store.transition(job_id, state, "")


def test_parked_cluster_goes_to_same_owner_only_and_credentials_reach_one_assignment(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        store = JobStore(tmp_path / "jobs.db")
        gate = Gate()
        core = SimpleNamespace(store=store, gates={"local": gate}, _live={}, _releases=0,
                               _dirty=asyncio.Event(), _reap_soon=False)
        pool = WarmPool(core)  # type: ignore[arg-type]
        _finished(store, "a", "alice")
        a = store.get("a", events=False)
        assert pool.park(a, await pool.idle_timeout("local"))
        # each node gets its credential once; then the old token is revoked
        creds = [pool.beat(a, r)["idle"]["credential"] for r in (0, 1)]
        assert pool.beat(a, 0) == {"action": "idle"}
        assert store.token_hash("a") is None
        with pytest.raises(PermissionDeniedError):
            await pool.idle_next("a-0", "guess", 0, 0)
        with pytest.raises(PermissionDeniedError):
            await pool.idle_next("a-0", creds[0], 1, 0)  # node 0's credential is not node 1's
        assert await pool.idle_next("a-0", creds[0], 0, 0) == {"action": "wait"}
        assert [r.id for r in pool.holding()] == ["warm:a-0"]

        store.add("m", "mallory", build_spec(SHAPE))
        store.transition("m", S.SCHEDULED, "", gate="local")
        assert not await pool.try_assign(store.get("m", events=False), "local")
        store.add("b", "alice", build_spec(SHAPE))
        store.transition("b", S.SCHEDULED, "", gate="local")
        assert await pool.try_assign(store.get("b", events=False), "local")
        b = store.get("b")
        assert b.state == S.PROVISIONING and b.cluster_id == "a-0"
        assert b.events[-1].reason == "reusing warm cluster a-0 of job a on gate local"
        answers = [await pool.idle_next("a-0", creds[r], r, 0) for r in (0, 1)]
        assert {x["job_id"] for x in answers} == {"b"}
        assert tokens.hash_token(answers[0]["token"]) == store.token_hash("b")
        with pytest.raises(PermissionDeniedError):  # no longer idle: the credentials are dead
            await pool.idle_next("a-0", creds[0], 0, 0)
        assert pool.holding() == [] and gate.deleted == []

    asyncio.run(scenario())
