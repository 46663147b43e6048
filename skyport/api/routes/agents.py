"""Agent routes under ``/agent/v1/jobs/{job_id}``: the job's bearer token reaches its job only.

See ``skyport/agent/PROTOCOL.md`` for the conversation; the bodies are in
``skyport.protocol``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from skyport.api.deps import Bearer
from skyport.api.files import ranged_download, streamed_upload
from skyport.api.routes.direct import add_direct_routes
from skyport.checkpoint import LATEST
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.core.waiters import JobWaiters
from skyport.direct import DirectAccess
from skyport.errors import PermissionDeniedError, ValidationError
from skyport.models import Job
from skyport.protocol import (
    ExitBody,
    FileEntry,
    HeartbeatAnswer,
    HelloAnswer,
    HelloBody,
    SizeAnswer,
    StateBody,
)
from skyport.runtime.contract import is_result_path
from skyport.storage import JobStorage

__all__ = ["MAX_LOG_CHUNK", "agents_router", "check_agent_checkpoint_path"]

MAX_LOG_CHUNK = 4 * 1024 * 1024
AGENT_READABLE = ("script.sh", "inputs/", "checkpoints/", "bcast/")
AGENT_WRITABLE = ("outputs/", "checkpoints/", "bcast/")  # bcast/: skyport.agent.nodes
Stream = Literal["stdout", "stderr"]


def agents_router(core: CorePort, storage: JobStorage,
                  log_events: JobWaiters | None = None) -> APIRouter:
    """``log_events``: woken on each log append and state report (``logs -f`` waits on it)."""
    r = APIRouter(prefix="/agent/v1/jobs/{job_id}")
    events = log_events if log_events is not None else JobWaiters()

    @r.post("/nodes/{rank}/hello")
    async def hello(job_id: str, rank: int, body: HelloBody, token: Bearer) -> HelloAnswer:
        got = await core.execute(c.AgentHello(job_id, token, rank, body.node_name,
                                                body.facts))
        return HelloAnswer.model_validate(got)

    @r.post("/nodes/{rank}/heartbeat")
    async def heartbeat(job_id: str, rank: int, token: Bearer) -> HeartbeatAnswer:
        # the Core answers a HeartbeatAnswer (or, before its rewrite, a dict of its keys)
        got = await core.execute(c.AgentHeartbeat(job_id, token, rank))
        return HeartbeatAnswer.model_validate(got)

    @r.post("/state")
    async def agent_state(job_id: str, body: StateBody, token: Bearer) -> Job:
        job: Job = await core.execute(c.AgentState(job_id, token, body.state, body.reason))
        events.notify(job_id)
        return job

    @r.post("/exit")
    async def agent_exit(job_id: str, body: ExitBody, token: Bearer) -> Job:
        job: Job = await core.execute(
            c.AgentExit(job_id, token, body.exit_code, body.timed_out, body.reason,
                        tuple(body.output_problems)))
        events.notify(job_id)
        return job

    @r.get("/inputs")
    async def agent_inputs(job_id: str, token: Bearer) -> list[str]:
        await core.execute(c.AgentAuth(job_id, token))
        return [f["path"] for f in storage.listdir(job_id) if f["path"].startswith("inputs/")]

    @r.get("/files")
    async def agent_files(job_id: str, token: Bearer) -> list[FileEntry]:
        await core.execute(c.AgentAuth(job_id, token))
        listed = await anyio.to_thread.run_sync(storage.listdir, job_id)
        return [FileEntry.model_validate(f) for f in listed
                if any(f["path"] == p or (p.endswith("/") and f["path"].startswith(p))
                       for p in AGENT_READABLE)]

    @r.get("/files/{path:path}")
    async def agent_get(job_id: str, path: str, request: Request,
                        token: Bearer) -> StreamingResponse:
        await core.execute(c.AgentAuth(job_id, token))
        _check_prefix(path, AGENT_READABLE)
        return await ranged_download(storage, job_id, path, request.headers.get("range"))

    @r.put("/files/{path:path}")
    async def agent_put(job_id: str, path: str, request: Request, token: Bearer) -> SizeAnswer:
        # streamed to storage whatever its size (the body limit exempts this route)
        await core.execute(c.AgentAuth(job_id, token))
        _check_prefix(path, AGENT_WRITABLE)
        check_agent_checkpoint_path(path)  # latest.json is the server's alone
        size, digest = await streamed_upload(storage, job_id, path, request)
        if is_result_path(path):
            # stored first, then its digest: bytes without a recorded digest are never
            # unpickled (result()), so a token revoked in between leaves no result at all
            await core.execute(c.AgentResultStored(job_id, token, path, digest))
        return SizeAnswer(size=size, sha256=digest)

    @r.post("/logs/{stream}")
    async def agent_log(
        job_id: str,
        stream: Stream,
        request: Request,
        token: Bearer,
        offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    ) -> SizeAnswer:
        await core.execute(c.AgentAuth(job_id, token))
        data = await request.body()
        if len(data) > MAX_LOG_CHUNK:
            raise ValidationError("body", f"{len(data)} bytes", f"at most {MAX_LOG_CHUNK} bytes")
        size = storage.append(job_id, f"logs/{stream}", offset, data)
        events.notify(job_id)
        return SizeAnswer(size=size)

    def writable(path: str) -> None:
        _check_prefix(path, AGENT_WRITABLE)
        check_agent_checkpoint_path(path)

    add_direct_routes(r, core, DirectAccess(storage),
                      readable=lambda path: _check_prefix(path, AGENT_READABLE),
                      writable=writable)
    return r


def check_agent_checkpoint_path(path: str) -> None:
    """Agents upload under ``checkpoints/v<N>/`` only; the pointer is the server's."""
    if path.startswith("checkpoints/") and not path.startswith("checkpoints/v"):
        raise PermissionDeniedError(
            f"an agent may not write {path!r}: checkpoints go under checkpoints/v<N>/ and "
            f"{LATEST} is written by the control plane")


def _check_prefix(path: str, allowed: tuple[str, ...]) -> None:
    if ".." in path.split("/") or not any(
        path == p or (p.endswith("/") and path.startswith(p)) for p in allowed
    ):
        raise PermissionDeniedError(
            f"an agent may not reach {path!r} (allowed: {', '.join(allowed)})"
        )
