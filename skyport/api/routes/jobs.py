"""User routes under ``/v1``: jobs, their logs and files, and the control plane's views."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from skyport.api.deps import User
from skyport.api.files import ranged_download
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.models import Job, JobState, SubmitRequest
from skyport.protocol import (
    ClusterView,
    FileEntry,
    GateView,
    StatusView,
    TimetableView,
    WhoAmI,
)
from skyport.storage import JobStorage

__all__ = ["jobs_router"]

Stream = Literal["stdout", "stderr"]


def jobs_router(core: CorePort, storage: JobStorage, version: str) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/whoami")
    async def whoami(who: User) -> WhoAmI:
        return WhoAmI(username=who.username, role=who.role)

    @r.post("/jobs", status_code=201)
    async def submit(body: SubmitRequest, who: User) -> Job:
        return await core.execute(c.Submit(who, body.spec, body.payload_b64))

    @r.get("/jobs")
    async def jobs(
        who: User,
        all: bool = False,  # noqa: A002 - the query parameter's public name
        state: Annotated[list[JobState] | None, Query()] = None,
    ) -> list[Job]:
        return list(await core.execute(c.ListJobs(who, all, state)))

    @r.get("/jobs/{job_id}")
    async def job(job_id: str, who: User) -> Job:
        return await core.execute(c.GetJob(who, job_id))

    @r.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str, who: User) -> Job:
        return await core.execute(c.Cancel(who, job_id))

    @r.get("/jobs/{job_id}/logs/{stream}")
    async def logs(
        job_id: str, stream: Stream, who: User, offset: Annotated[int, Query(ge=0)] = 0
    ) -> Response:
        job: Job = await core.execute(c.GetJob(who, job_id))
        rel = f"logs/{stream}"
        data = storage.read_from(job_id, rel, offset)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "X-Skyport-Log-Size": str(storage.size(job_id, rel)),
                "X-Skyport-Job-State": job.state.value,
            },
        )

    @r.get("/jobs/{job_id}/files")
    async def files(job_id: str, who: User) -> list[FileEntry]:
        await core.execute(c.GetJob(who, job_id))
        return [FileEntry.model_validate(f) for f in storage.listdir(job_id)]

    @r.get("/jobs/{job_id}/files/{path:path}")
    async def file(job_id: str, path: str, request: Request, who: User) -> StreamingResponse:
        """One stored file, streamed; ``Range: bytes=N-`` resumes an interrupted fetch."""
        await core.execute(c.GetJob(who, job_id))
        return await ranged_download(storage, job_id, path, request.headers.get("range"))

    @r.get("/status")
    async def status(who: User) -> StatusView:
        return StatusView.model_validate({"version": version,
                                          **(await core.execute(c.Status()))})

    @r.get("/gates")
    async def gates(who: User) -> list[GateView]:
        return [GateView.model_validate(g) for g in await core.execute(c.GateInfo())]

    @r.get("/clusters")
    async def clusters(who: User) -> list[ClusterView]:
        """Every gate's clusters with job, age, state and cost so far (users: their own)."""
        return [ClusterView.model_validate(x) for x in await core.execute(c.Clusters(who))]

    @r.get("/timetable")
    async def timetable(who: User) -> TimetableView:
        return TimetableView.model_validate(await core.execute(c.Timetable()))

    return r
