"""User routes under ``/v1``: jobs, their logs and files, and the control plane's views."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from skyport.api.deps import User
from skyport.api.files import ranged_download
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.core.waiters import MAX_WAIT_S, JobWaiters
from skyport.models import Job, JobState, SubmitRequest
from skyport.protocol import (
    ArraySubmitRequest,
    ArrayView,
    BatchSubmitRequest,
    CancelAnswer,
    CancelRequest,
    ClusterView,
    FileEntry,
    GateView,
    StatusView,
    TimetableView,
    WhoAmI,
)
from skyport.storage import JobStorage

__all__ = ["MAX_OFFSET", "MAX_PAGE", "SCRIPT_IN_LISTINGS", "jobs_router"]

Stream = Literal["stdout", "stderr"]
MAX_PAGE = 500  # jobs in one answer of GET /v1/jobs
MAX_OFFSET = 2**63 - 1  # the largest a file offset can be
SCRIPT_IN_LISTINGS = "# not in listings: GET /v1/jobs/{id} (skyport show {id}) has the script\n"


def _without_script(job: Job) -> Job:
    """A listing carries no script: one user's 1 MiB scripts would make everyone's slow."""
    spec = job.spec.model_copy(update={"script": SCRIPT_IN_LISTINGS.format(id=job.id)})
    return job.model_copy(update={"spec": spec})


def jobs_router(core: CorePort, storage: JobStorage, version: str,
                log_events: JobWaiters | None = None) -> APIRouter:
    """``log_events``: woken by the agent routes on each log append and state report."""
    r = APIRouter(prefix="/v1")
    log_events = log_events if log_events is not None else JobWaiters()

    @r.get("/whoami")
    async def whoami(who: User) -> WhoAmI:
        return WhoAmI(username=who.username, role=who.role)

    @r.post("/jobs", status_code=201)
    async def submit(body: SubmitRequest, who: User) -> Job:
        return await core.execute(c.Submit(who, body.spec, body.payload_b64))

    @r.post("/jobs/batch", status_code=201)
    async def submit_batch(body: BatchSubmitRequest, who: User) -> list[Job]:
        """Several jobs in one call and one transaction: all stored, or none (the error
        names the first refused one as ``jobs[i]``)."""
        return list(await core.execute(c.SubmitMany(
            who, [(j.spec, j.payload_b64) for j in body.jobs])))

    @r.post("/arrays", status_code=201)
    async def submit_array(body: ArraySubmitRequest, who: User) -> ArrayView:
        """A job array (``spec.array``) in one call: one record, one task per index."""
        return ArrayView.model_validate(
            await core.execute(c.SubmitArray(who, body.spec, body.payloads_b64)))

    @r.get("/arrays/{array_id}")
    async def array(array_id: str, who: User) -> ArrayView:
        """An array's indices and its tasks' count per state (tasks: ``/jobs/{id}_{i}``)."""
        return ArrayView.model_validate(await core.execute(c.GetArray(who, array_id)))

    @r.get("/jobs")
    async def jobs(
        who: User,
        response: Response,
        all: bool = False,  # noqa: A002 - the query parameter's public name
        state: Annotated[list[JobState] | None, Query()] = None,
        after: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
        order: Literal["oldest", "newest"] = "oldest",
    ) -> list[Job]:
        """A page of jobs without their scripts (``GET /v1/jobs/{id}`` has the script),
        in submission order, or newest first with ``order=newest``.

        ``X-Skyport-Next-After`` names the last job when the page is full: ask again
        with ``after=`` it (and the same ``order``) for the next page.
        """
        page = list(await core.execute(c.ListJobs(who, all, state, after, limit,
                                                  order == "newest")))
        if len(page) == limit:
            response.headers["X-Skyport-Next-After"] = page[-1].id
        return [_without_script(j) for j in page]

    @r.get("/jobs/{job_id}")
    async def job(job_id: str, who: User) -> Job:
        return await core.execute(c.GetJob(who, job_id))

    @r.get("/jobs/{job_id}/wait")
    async def wait(
        job_id: str, who: User,
        timeout_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = MAX_WAIT_S,
        since: JobState | None = None,
    ) -> Job:
        """Long-poll: the job once it is terminal (or no longer in ``since``), else as it is
        after ``timeout_s``; the Core wakes the call on the job's transition."""
        return await core.execute(c.WaitJob(who, job_id, timeout_s, since))

    @r.post("/jobs/cancel")
    async def cancel_many(body: CancelRequest, who: User) -> CancelAnswer:
        """Cancel many jobs in one call and one transaction (``skyport cancel --all`` ...)."""
        return CancelAnswer.model_validate(await core.execute(
            c.CancelMany(who, body.job_ids, body.states, body.name, body.all)))

    @r.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str, who: User) -> Job:
        return await core.execute(c.Cancel(who, job_id))

    @r.post("/jobs/{job_id}/hold")
    async def hold(job_id: str, who: User) -> Job:
        """Keep a QUEUED job out of planning until it is released."""
        return await core.execute(c.Hold(who, job_id))

    @r.post("/jobs/{job_id}/release")
    async def release(job_id: str, who: User) -> Job:
        return await core.execute(c.Release(who, job_id))

    @r.get("/jobs/{job_id}/logs/{stream}")
    async def logs(
        job_id: str, stream: Stream, who: User,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0,
    ) -> Response:
        """Log bytes from ``offset``; ``wait_s``: with nothing new yet, wait up to that long
        for the agent's next append or state report (``skyport logs -f``)."""
        job: Job = await core.execute(c.GetJob(who, job_id))
        rel = f"logs/{stream}"
        size = storage.size(job_id, rel)
        if offset >= size and wait_s > 0 and not job.state.is_terminal():
            await log_events.wait(job_id, wait_s)
            job = await core.execute(c.GetJob(who, job_id))
            size = storage.size(job_id, rel)
        # past the end there is nothing to read (a seek far past it fails on some systems)
        data = storage.read_from(job_id, rel, offset) if offset < size else b""
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "X-Skyport-Log-Size": str(size),
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
                                          **(await core.execute(c.Status(who)))})

    @r.get("/gates")
    async def gates(who: User) -> list[GateView]:
        return [GateView.model_validate(g) for g in await core.execute(c.GateInfo())]

    @r.get("/clusters")
    async def clusters(who: User) -> list[ClusterView]:
        """Every gate's clusters with job, age, state and cost so far (users: their own)."""
        return [ClusterView.model_validate(x) for x in await core.execute(c.Clusters(who))]

    @r.get("/timetable")
    async def timetable(who: User) -> TimetableView:
        return TimetableView.model_validate(await core.execute(c.Timetable(who)))

    return r
