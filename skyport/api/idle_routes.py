"""REST route for idle nodes of a warm cluster (``skyport.core.warm``, PROTOCOL.md).

An idle node holds no job token, only its idle credential, which reaches
this one call: ``POST /agent/v1/idle/{cluster_id}/nodes/{rank}/next``, a
long-poll that answers the node's next job (id and token) once the Core has
handed the cluster to one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from skyport.errors import AuthenticationError

__all__ = ["idle_router"]


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("an idle node's call needs 'Authorization: Bearer "
                                  "<idle credential>'")
    return token.strip()


Credential = Annotated[str, Depends(_bearer)]


def idle_router(core: Any) -> APIRouter:
    r = APIRouter(prefix="/agent/v1/idle/{cluster_id}")

    @r.post("/nodes/{rank}/next")
    async def next_job(cluster_id: str, rank: int, credential: Credential,
                       wait_s: Annotated[float, Query(ge=0, le=30)] = 0) -> dict[str, Any]:
        return await core.agent_idle_next(cluster_id, credential, rank, wait_s)

    return r
