"""Launch routes: one node of a job runs a command on another (``PROTOCOL.md``).

All sit under ``/agent/v1/jobs/{job_id}`` and take the job's bearer token.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from skyport.api.deps import Bearer
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.errors import ValidationError
from skyport.protocol import (
    Empty,
    LaunchBody,
    LaunchCreated,
    LaunchExitBody,
    LaunchPoll,
    LaunchRead,
    NodeNames,
    SizeAnswer,
)

__all__ = ["MAX_ARGV_BYTES", "MAX_OUTPUT_CHUNK", "launches_router"]

MAX_OUTPUT_CHUNK = 1024 * 1024
MAX_ARGV_BYTES = 256 * 1024


def launches_router(core: CorePort) -> APIRouter:
    r = APIRouter(prefix="/agent/v1/jobs/{job_id}")

    @r.get("/nodes")
    async def nodes(job_id: str, token: Bearer) -> NodeNames:
        return NodeNames.model_validate(await core.execute(c.LaunchNodes(job_id, token)))

    @r.post("/launches", status_code=201)
    async def create(job_id: str, body: LaunchBody, token: Bearer) -> LaunchCreated:
        size = sum(len(a) for a in body.argv) + sum(len(k) + len(v) for k, v in
                                                    body.env.items())
        if size > MAX_ARGV_BYTES:
            raise ValidationError("argv", f"{size} bytes", f"at most {MAX_ARGV_BYTES} bytes")
        got = await core.execute(
            c.LaunchCreate(job_id, token, body.node, body.argv, body.env, body.cwd, body.op))
        return LaunchCreated.model_validate(got)

    @r.post("/nodes/{rank}/launches")
    async def poll(job_id: str, rank: int, token: Bearer,
                   wait_s: Annotated[float, Query(ge=0, le=30)] = 0) -> LaunchPoll:
        return LaunchPoll.model_validate(
            await core.execute(c.LaunchPollCmd(job_id, token, rank, wait_s)))

    @r.post("/launches/{launch_id}/output/{stream}")
    async def output(job_id: str, launch_id: str, stream: Literal["stdout", "stderr"],
                     request: Request, token: Bearer,
                     node: Annotated[int, Query(ge=0)],
                     offset: Annotated[int, Query(ge=0)] = 0) -> SizeAnswer:
        data = await request.body()
        if len(data) > MAX_OUTPUT_CHUNK:
            raise ValidationError("body", f"{len(data)} bytes", f"at most {MAX_OUTPUT_CHUNK}")
        got = await core.execute(
            c.LaunchOutput(job_id, token, launch_id, node, stream, offset, data))
        return SizeAnswer.model_validate(got)

    @r.post("/launches/{launch_id}/exit")
    async def exit_(job_id: str, launch_id: str, body: LaunchExitBody,
                    token: Bearer) -> Empty:
        await core.execute(c.LaunchExit(job_id, token, launch_id, body.node, body.exit_code))
        return Empty()

    @r.get("/launches/{launch_id}")
    async def read(job_id: str, launch_id: str, token: Bearer,
                   stdout: Annotated[int, Query(ge=0)] = 0,
                   stderr: Annotated[int, Query(ge=0)] = 0,
                   wait_s: Annotated[float, Query(ge=0, le=30)] = 0) -> LaunchRead:
        got = dict(await core.execute(c.LaunchReadCmd(
            job_id, token, launch_id, {"stdout": stdout, "stderr": stderr}, wait_s)))
        for s in ("stdout", "stderr"):
            got[s] = base64.b64encode(got[s]).decode()
        return LaunchRead.model_validate(got)

    @r.post("/launches/{launch_id}/cancel")
    async def cancel(job_id: str, launch_id: str, token: Bearer) -> Empty:
        await core.execute(c.LaunchCancel(job_id, token, launch_id))
        return Empty()

    return r
