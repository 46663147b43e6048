"""Agent routes of the direct data path: ``/agent/v1/jobs/{job_id}/direct/...``.

Each call needs the job's live bearer token and names one file the agent may
reach (the same rule as the streaming file routes); the answer is a presigned
URL for that object only (``skyport.direct``).  On storage without a direct
path the answers carry no URL and the agent uses ``/files/`` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi import APIRouter

from skyport.api.deps import Bearer
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.direct import DirectAccess
from skyport.protocol import (
    DirectDoneBody,
    DirectReadAnswer,
    DirectReadBody,
    DirectWriteAnswer,
    DirectWriteBody,
    SizeAnswer,
)
from skyport.runtime.contract import is_result_path

__all__ = ["add_direct_routes"]


def add_direct_routes(r: APIRouter, core: CorePort, direct: DirectAccess,
                      readable: Callable[[str], None], writable: Callable[[str], None]
                      ) -> None:
    """The routes on ``r``; ``readable``/``writable`` refuse a path the agent may not reach
    (the agents routes' own rules)."""

    @r.post("/direct/read")
    async def direct_read(job_id: str, body: DirectReadBody, token: Bearer
                          ) -> DirectReadAnswer:
        await core.execute(c.AgentAuth(job_id, token))
        readable(body.path)
        if not direct.available:
            return DirectReadAnswer()
        got = await anyio.to_thread.run_sync(direct.read, job_id, body.path)
        return DirectReadAnswer(url=got.url, size=got.size, sha256=got.sha256,
                                expires_in=got.expires_in)

    @r.post("/direct/write")
    async def direct_write(job_id: str, body: DirectWriteBody, token: Bearer
                           ) -> DirectWriteAnswer:
        await core.execute(c.AgentAuth(job_id, token))
        writable(body.path)
        if not direct.available:
            return DirectWriteAnswer()
        got = await anyio.to_thread.run_sync(direct.start_write, job_id, body.path, body.size)
        if got.upload_id:
            try:  # recorded before the agent can use it: aborted if the attempt leaves it
                await core.execute(c.DirectUploadOpened(job_id, token, body.path, got.upload_id))
            except BaseException:
                await anyio.to_thread.run_sync(direct.abort_write, job_id, body.path,
                                               got.upload_id)
                raise
        return DirectWriteAnswer(upload_id=got.upload_id, part_size=got.part_size,
                                 urls=list(got.urls), expires_in=got.expires_in)

    @r.post("/direct/done")
    async def direct_done(job_id: str, body: DirectDoneBody, token: Bearer) -> SizeAnswer:
        await core.execute(c.AgentAuth(job_id, token))
        writable(body.path)
        size, digest = await anyio.to_thread.run_sync(
            direct.complete_write, job_id, body.path, body.upload_id, list(body.etags),
            body.size, body.sha256)
        if body.upload_id:
            await core.execute(c.DirectUploadClosed(job_id, token, body.upload_id))
        if is_result_path(body.path):
            await core.execute(c.AgentResultStored(job_id, token, body.path, digest))
        return SizeAnswer(size=size, sha256=digest)
