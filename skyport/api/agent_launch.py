"""REST routes for launches: one node of a job runs a command on another (PROTOCOL.md).

All routes sit under ``/agent/v1/jobs/{job_id}`` and take the job's bearer
token, like the rest of the agent protocol; ``core`` is anything with the
Core's ``agent_launch_*`` coroutines.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from skyport.errors import AuthenticationError, ValidationError

__all__ = ["launch_router"]

MAX_OUTPUT_CHUNK = 1024 * 1024
MAX_ARGV_BYTES = 256 * 1024


class LaunchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: int = Field(ge=0)
    argv: list[str] = Field(min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = Field("", max_length=4096)


class LaunchExitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: int = Field(ge=0)
    exit_code: int


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("an agent call needs 'Authorization: Bearer <job token>'")
    return token.strip()


Token = Annotated[str, Depends(_bearer)]


def launch_router(core: Any) -> APIRouter:
    r = APIRouter(prefix="/agent/v1/jobs/{job_id}")

    @r.get("/nodes")
    async def nodes(job_id: str, token: Token) -> dict[str, Any]:
        return await core.agent_launch_nodes(job_id, token)

    @r.post("/launches", status_code=201)
    async def create(job_id: str, body: LaunchBody, token: Token) -> dict[str, Any]:
        size = sum(len(a) for a in body.argv) + sum(len(k) + len(v) for k, v in
                                                    body.env.items())
        if size > MAX_ARGV_BYTES:
            raise ValidationError("argv", f"{size} bytes", f"at most {MAX_ARGV_BYTES} bytes")
        return await core.agent_launch_create(job_id, token, body.node, body.argv, body.env,
                                              body.cwd)

    @r.post("/nodes/{rank}/launches")
    async def poll(job_id: str, rank: int, token: Token,
                   wait_s: Annotated[float, Query(ge=0, le=30)] = 0) -> dict[str, Any]:
        return await core.agent_launch_poll(job_id, token, rank, wait_s)

    @r.post("/launches/{launch_id}/output/{stream}")
    async def output(job_id: str, launch_id: str, stream: Literal["stdout", "stderr"],
                     request: Request, token: Token,
                     node: Annotated[int, Query(ge=0)],
                     offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, int]:
        data = await request.body()
        if len(data) > MAX_OUTPUT_CHUNK:
            raise ValidationError("body", f"{len(data)} bytes", f"at most {MAX_OUTPUT_CHUNK}")
        return await core.agent_launch_output(job_id, token, launch_id, node, stream, offset,
                                              data)

    @r.post("/launches/{launch_id}/exit")
    async def exit_(job_id: str, launch_id: str, body: LaunchExitBody,
                    token: Token) -> dict[str, Any]:
        return await core.agent_launch_exit(job_id, token, launch_id, body.node,
                                            body.exit_code)

    @r.get("/launches/{launch_id}")
    async def read(job_id: str, launch_id: str, token: Token,
                   stdout: Annotated[int, Query(ge=0)] = 0,
                   stderr: Annotated[int, Query(ge=0)] = 0,
                   wait_s: Annotated[float, Query(ge=0, le=30)] = 0) -> dict[str, Any]:
        got = await core.agent_launch_read(job_id, token, launch_id,
                                           {"stdout": stdout, "stderr": stderr}, wait_s)
        for s in ("stdout", "stderr"):
            got[s] = base64.b64encode(got[s]).decode()
        return got

    @r.post("/launches/{launch_id}/cancel")
    async def cancel(job_id: str, launch_id: str, token: Token) -> dict[str, Any]:
        return await core.agent_launch_cancel(job_id, token, launch_id)

    return r
