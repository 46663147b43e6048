"""The idle nodes' one route (``skyport.core.warm``, ``PROTOCOL.md``).

An idle node holds no job token, only its idle credential, which reaches
this one call: ``POST /agent/v1/idle/{cluster_id}/nodes/{rank}/next``, a
long-poll that answers the node's next job (id and token) once the Core has
handed the cluster to one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from skyport.api.deps import Bearer
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.protocol import IdleNext

__all__ = ["idle_router"]


def idle_router(core: CorePort) -> APIRouter:
    r = APIRouter(prefix="/agent/v1/idle/{cluster_id}")

    @r.post("/nodes/{rank}/next")
    async def next_job(cluster_id: str, rank: int, credential: Bearer,
                       wait_s: Annotated[float, Query(ge=0, le=30)] = 0) -> IdleNext:
        return IdleNext.model_validate(
            await core.execute(c.AgentIdleNext(cluster_id, credential, rank, wait_s)))

    return r
