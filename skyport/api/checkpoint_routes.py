"""REST routes for checkpoints, requeues and injected failures (ROUTES.md, PROTOCOL.md).

Agent routes sit under ``/agent/v1/jobs/{job_id}/checkpoints`` and take the
job's bearer token; user routes take the client certificate; the ``/v1/debug``
routes are for admins (the Core checks).  Every call goes to the Core's
``recovery_call`` (``skyport.core.recovery``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from skyport.api.tls import peer_identity
from skyport.checkpoint import LATEST
from skyport.errors import AuthenticationError, PermissionDeniedError

__all__ = ["check_agent_checkpoint_path", "checkpoint_router"]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class PartFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=4096)
    size: int = Field(ge=0)


class PartBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    files: list[PartFile] = Field(default_factory=list, max_length=100_000)


def check_agent_checkpoint_path(path: str) -> None:
    """Agents upload under ``checkpoints/v<N>/`` only; the pointer is the server's."""
    if path.startswith("checkpoints/") and not path.startswith("checkpoints/v"):
        raise PermissionDeniedError(
            f"an agent may not write {path!r}: checkpoints go under checkpoints/v<N>/ and "
            f"{LATEST} is written by the control plane")


def _user(request: Request) -> Any:
    who = peer_identity(request)
    if who is None:
        raise AuthenticationError("a client certificate issued by this Sky Port's CA is required")
    return who


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("an agent call needs 'Authorization: Bearer <job token>'")
    return token.strip()


User = Annotated[Any, Depends(_user)]
Token = Annotated[str, Depends(_bearer)]


def checkpoint_router(core: Any) -> APIRouter:
    r = APIRouter()
    agent = "/agent/v1/jobs/{job_id}/checkpoints"

    async def call(name: str, *args: Any) -> Any:
        return await core.recovery_call(name, *args)

    # -- agents ------------------------------------------------------------------

    @r.post(agent, status_code=201)
    async def agent_request(job_id: str, body: RequestBody, token: Token) -> dict[str, Any]:
        return await call("agent_request", job_id, token, body.reason)

    @r.post(agent + "/{version}/parts/{rank}")
    async def agent_part(job_id: str, version: int, rank: int, body: PartBody,
                         token: Token) -> dict[str, Any]:
        files = [f.model_dump() for f in body.files]
        return await call("agent_part", job_id, token, version, body.id, rank, files)

    @r.get(agent)
    async def agent_latest(job_id: str, token: Token) -> dict[str, Any]:
        return await call("agent_latest", job_id, token)

    # -- users -------------------------------------------------------------------

    @r.get("/v1/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, who: User) -> dict[str, Any]:
        return await call("checkpoints", who, job_id)

    @r.post("/v1/jobs/{job_id}/checkpoints", status_code=201)
    async def checkpoint(job_id: str, who: User) -> dict[str, Any]:
        return await call("user_checkpoint", who, job_id)

    @r.post("/v1/jobs/{job_id}/requeue")
    async def requeue(job_id: str, who: User) -> dict[str, Any]:
        return (await call("requeue", who, job_id)).summary()

    @r.post("/v1/jobs/{job_id}/cancel-checkpointed")
    async def cancel_checkpointed(job_id: str, who: User) -> dict[str, Any]:
        return (await call("cancel_after_checkpoint", who, job_id)).summary()

    # -- admins: inject failures -----------------------------------------------------

    @r.post("/v1/debug/jobs/{job_id}/kill-node")
    async def kill_node(job_id: str, who: User,
                        node: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
        return await call("debug_kill_node", who, job_id, node)

    @r.post("/v1/debug/jobs/{job_id}/preempt")
    async def preempt(job_id: str, who: User,
                      notice_s: Annotated[float, Query(gt=0, le=3600)] = 20.0) -> dict[str, Any]:
        return await call("debug_preempt", who, job_id, notice_s)

    return r
