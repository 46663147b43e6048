"""Checkpoints, requeues and injected failures (``ROUTES.md``, ``PROTOCOL.md``).

Agent routes sit under ``/agent/v1/jobs/{job_id}/checkpoints`` and take the
job's bearer token; user routes take the client certificate; the ``/v1/debug``
routes are for admins (the Core checks).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from skyport.api.deps import Bearer, User
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.models import Job
from skyport.protocol import (
    CheckpointOpened,
    CheckpointOrder,
    CheckpointsView,
    KillNodeAnswer,
    LatestAnswer,
    PartAnswer,
    PartBody,
    PreemptAnswer,
    RequestBody,
)

__all__ = ["checkpoints_router"]


def checkpoints_router(core: CorePort) -> APIRouter:
    r = APIRouter()
    agent = "/agent/v1/jobs/{job_id}/checkpoints"

    # -- agents ------------------------------------------------------------------

    @r.post(agent, status_code=201)
    async def agent_request(job_id: str, body: RequestBody, token: Bearer) -> CheckpointOrder:
        got = await core.execute(c.AgentCheckpointRequest(job_id, token, body.reason))
        return CheckpointOrder.model_validate(got)

    @r.post(agent + "/{version}/parts/{rank}")
    async def agent_part(job_id: str, version: int, rank: int, body: PartBody,
                         token: Bearer) -> PartAnswer:
        files = [f.model_dump() for f in body.files]
        got = await core.execute(
            c.AgentCheckpointPart(job_id, token, version, body.id, rank, files))
        return PartAnswer.model_validate(got)

    @r.get(agent)
    async def agent_latest(job_id: str, token: Bearer) -> LatestAnswer:
        return LatestAnswer.model_validate(
            await core.execute(c.AgentCheckpointLatest(job_id, token)))

    # -- users -------------------------------------------------------------------

    @r.get("/v1/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, who: User) -> CheckpointsView:
        return CheckpointsView.model_validate(await core.execute(c.Checkpoints(who, job_id)))

    @r.post("/v1/jobs/{job_id}/checkpoints", status_code=201)
    async def checkpoint(job_id: str, who: User) -> CheckpointOpened:
        return CheckpointOpened.model_validate(
            await core.execute(c.UserCheckpoint(who, job_id)))

    @r.post("/v1/jobs/{job_id}/requeue")
    async def requeue(job_id: str, who: User) -> Job:
        return await core.execute(c.Requeue(who, job_id))

    @r.post("/v1/jobs/{job_id}/cancel-checkpointed")
    async def cancel_checkpointed(job_id: str, who: User) -> Job:
        return await core.execute(c.CancelAfterCheckpoint(who, job_id))

    # -- admins: inject failures -----------------------------------------------------

    @r.post("/v1/debug/jobs/{job_id}/kill-node")
    async def kill_node(job_id: str, who: User,
                        node: Annotated[int | None, Query(ge=0)] = None) -> KillNodeAnswer:
        return KillNodeAnswer.model_validate(
            await core.execute(c.DebugKillNode(who, job_id, node)))

    @r.post("/v1/debug/jobs/{job_id}/preempt")
    async def preempt(job_id: str, who: User,
                      notice_s: Annotated[float, Query(gt=0, le=3600)] = 20.0) -> PreemptAnswer:
        return PreemptAnswer.model_validate(
            await core.execute(c.DebugPreempt(who, job_id, notice_s)))

    return r
