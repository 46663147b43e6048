"""The REST API: the only door for terminals and agents.

Users authenticate with a client certificate from the state directory's CA
(checked during the TLS handshake; the verified identity reaches each request
through ``skyport.api.tls.peer_identity``).  Agents carry no certificate:
they send their job's bearer token, which reaches that one job only.

``core`` is any object with the Core's async methods: a ``CoreService`` in
tests, an ``ActorProxy`` around the Core actor in the control plane.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from skyport.api.agent_launch import launch_router
from skyport.api.checkpoint_routes import check_agent_checkpoint_path, checkpoint_router
from skyport.api.idle_routes import idle_router
from skyport.api.tls import peer_identity
from skyport.api.uploads import upload_router
from skyport.errors import (
    AuthenticationError,
    PermissionDeniedError,
    SkyportError,
    ValidationError,
)
from skyport.models import JobState, SubmitRequest
from skyport.protocol import HeartbeatAnswer
from skyport.storage import JobStorage

log = logging.getLogger("skyport.api")
MAX_BODY_BYTES = 96 * 1024 * 1024
MAX_LOG_CHUNK = 4 * 1024 * 1024
AGENT_READABLE = ("script.sh", "inputs/", "checkpoints/")
AGENT_WRITABLE = ("outputs/", "checkpoints/")
Stream = Literal["stdout", "stderr"]


class HelloBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    node_name: str = Field(min_length=1, max_length=200)
    hostname: str = ""
    pid: int = 0


class StateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: JobState
    reason: str = Field("", max_length=2000)


class ExitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exit_code: int
    timed_out: bool = False
    reason: str = Field("", max_length=4000)


class _BodyLimit:
    """Refuse oversized bodies before reading them (413), by declared length and as read."""

    def __init__(self, app: ASGIApp, limit: int, streamed: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.streamed = streamed  # routes that stream their body to storage: no limit here

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith(self.streamed):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"error": "ValidationError", "message": f"invalid body: too large (at most {limit} bytes)"},
        status_code=413,
    )


# -- who is calling (module level: FastAPI resolves these annotations by name)


def user(request: Request) -> Any:
    who = peer_identity(request)
    if who is None:
        raise AuthenticationError("a client certificate issued by this Sky Port's CA is required")
    return who


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("an agent call needs 'Authorization: Bearer <job token>'")
    return token.strip()


User = Annotated[Any, Depends(user)]
Token = Annotated[str, Depends(bearer)]


def create_app(core: Any, storage: JobStorage, *, version: str = "0.1.0") -> FastAPI:
    app = FastAPI(title="Sky Port", version=version)

    @app.exception_handler(SkyportError)
    async def _skyport_error(_: Request, exc: SkyportError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug or a failing dependency: logged in full here, one clear line for the caller
        cause = getattr(exc, "cause", None) or exc  # Ray wraps an actor's exception
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {"error": "SkyportError",
             "message": f"internal error: {type(cause).__name__}: {cause}"},
            status_code=500,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        err = ValidationError(loc, first.get("input"), msg)
        return JSONResponse(err.to_dict(), status_code=422)

    # -- users ---------------------------------------------------------------

    @app.get("/v1/whoami")
    async def whoami(who: User) -> dict[str, str]:
        return {"username": who.username, "role": who.role}

    @app.post("/v1/jobs", status_code=201)
    async def submit(body: SubmitRequest, who: User) -> dict[str, Any]:
        job = await core.submit(who, body.spec, body.payload_b64)
        return job.summary()

    @app.get("/v1/jobs")
    async def jobs(
        who: User,
        all: bool = False,  # noqa: A002 - the query parameter's public name
        state: Annotated[list[JobState] | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        return [j.summary() for j in await core.jobs(who, all, state)]

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str, who: User) -> dict[str, Any]:
        return (await core.get(who, job_id)).summary()

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel(job_id: str, who: User) -> dict[str, Any]:
        return (await core.cancel(who, job_id)).summary()

    @app.get("/v1/jobs/{job_id}/logs/{stream}")
    async def logs(
        job_id: str, stream: Stream, who: User, offset: Annotated[int, Query(ge=0)] = 0
    ) -> Response:
        job = await core.get(who, job_id)
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

    @app.get("/v1/jobs/{job_id}/files")
    async def files(job_id: str, who: User) -> list[dict[str, Any]]:
        await core.get(who, job_id)
        return storage.listdir(job_id)

    @app.get("/v1/jobs/{job_id}/files/{path:path}")
    async def file(job_id: str, path: str, who: User) -> Response:
        await core.get(who, job_id)
        return Response(storage.get(job_id, path), media_type="application/octet-stream")

    @app.get("/v1/status")
    async def status(who: User) -> dict[str, Any]:
        return {"version": version, **(await core.status())}

    @app.get("/v1/gates")
    async def gates(who: User) -> list[dict[str, Any]]:
        return await core.gate_info()

    @app.get("/v1/clusters")
    async def clusters(who: User) -> list[dict[str, Any]]:
        """Every gate's clusters with job, age, state and cost so far (users: their own)."""
        return list(await core.clusters(who))

    @app.get("/v1/timetable")
    async def timetable(who: User) -> dict[str, Any]:
        return await core.timetable()

    # -- agents --------------------------------------------------------------

    agent = "/agent/v1/jobs/{job_id}"

    @app.post(agent + "/nodes/{rank}/hello")
    async def hello(job_id: str, rank: int, body: HelloBody, token: Token) -> dict[str, Any]:
        return await core.agent_hello(job_id, token, rank, body.node_name)

    @app.post(agent + "/nodes/{rank}/heartbeat")
    async def heartbeat(job_id: str, rank: int, token: Token) -> HeartbeatAnswer:
        return HeartbeatAnswer.model_validate(await core.agent_heartbeat(job_id, token, rank))

    @app.post(agent + "/state")
    async def agent_state(job_id: str, body: StateBody, token: Token) -> dict[str, Any]:
        return (await core.agent_state(job_id, token, body.state, body.reason)).summary()

    @app.post(agent + "/exit")
    async def agent_exit(job_id: str, body: ExitBody, token: Token) -> dict[str, Any]:
        job = await core.agent_exit(job_id, token, body.exit_code, body.timed_out, body.reason)
        return job.summary()

    @app.get(agent + "/inputs")
    async def agent_inputs(job_id: str, token: Token) -> list[str]:
        await core.agent_auth(job_id, token)
        return [f["path"] for f in storage.listdir(job_id) if f["path"].startswith("inputs/")]

    @app.get(agent + "/files/{path:path}")
    async def agent_get(job_id: str, path: str, token: Token) -> Response:
        await core.agent_auth(job_id, token)
        _check_prefix(path, AGENT_READABLE)
        return Response(storage.get(job_id, path), media_type="application/octet-stream")

    @app.put(agent + "/files/{path:path}")
    async def agent_put(job_id: str, path: str, request: Request, token: Token) -> dict:
        await core.agent_auth(job_id, token)
        _check_prefix(path, AGENT_WRITABLE)
        check_agent_checkpoint_path(path)  # latest.json is the server's alone
        data = await request.body()
        storage.put(job_id, path, data)
        return {"size": len(data)}

    @app.post(agent + "/logs/{stream}")
    async def agent_log(
        job_id: str,
        stream: Stream,
        request: Request,
        token: Token,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, int]:
        await core.agent_auth(job_id, token)
        data = await request.body()
        if len(data) > MAX_LOG_CHUNK:
            raise ValidationError("body", f"{len(data)} bytes", f"at most {MAX_LOG_CHUNK} bytes")
        return {"size": storage.append(job_id, f"logs/{stream}", offset, data)}

    app.include_router(launch_router(core))
    app.include_router(checkpoint_router(core))
    app.include_router(idle_router(core))
    app.include_router(upload_router(storage, user))
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES, streamed=("/v1/uploads/",))
    return app


def _check_prefix(path: str, allowed: tuple[str, ...]) -> None:
    if ".." in path.split("/") or not any(
        path == p or (p.endswith("/") and path.startswith(p)) for p in allowed
    ):
        raise PermissionDeniedError(
            f"an agent may not reach {path!r} (allowed: {', '.join(allowed)})"
        )
