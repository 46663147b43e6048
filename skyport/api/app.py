"""The REST API: the only door for terminals and agents.

Users authenticate with a client certificate from the state directory's CA
(checked during the TLS handshake; the verified identity reaches each request
through ``skyport.api.deps.user``).  Agents carry no certificate: they send
their job's bearer token, which reaches that one job only.

``core`` is a ``CorePort`` (``skyport.core.commands``): an ``ActorProxy``
around the Core actor in the control plane, or a ``CoreService`` of this
process (tests, ``skyport.client.testing``), which is wrapped into one.  The
routes live in ``skyport.api.routes``; every body is a ``skyport.protocol``
model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from skyport.api.audit import AuditLog
from skyport.api.deps import User
from skyport.api.routes.agents import agents_router
from skyport.api.routes.bootstrap import bootstrap_router
from skyport.api.routes.budgets import budgets_router
from skyport.api.routes.checkpoints import checkpoints_router
from skyport.api.routes.idle import idle_router
from skyport.api.routes.jobs import jobs_router
from skyport.api.routes.launches import launches_router
from skyport.api.routes.relay import job_over, relay_router
from skyport.api.routes.uploads import uploads_router
from skyport.core.commands import CorePort, LocalCore
from skyport.core.service import CoreService
from skyport.core.waiters import JobWaiters
from skyport.errors import SkyportError, ValidationError
from skyport.protocol import ErrorBody
from skyport.relay.hub import RelayHub
from skyport.relay.secrets import JobSecrets
from skyport.storage import JobStorage
from skyport.users import UserRegistry

log = logging.getLogger("skyport.api")
MAX_BODY_BYTES = 96 * 1024 * 1024


class _BodyLimit:
    """Refuse oversized bodies before reading them (413), by declared length and as read."""

    def __init__(self, app: ASGIApp, limit: int, streamed: tuple[str, ...] = (),
                 streamed_re: str | None = None) -> None:
        self.app = app
        self.limit = limit
        self.streamed = streamed  # routes that stream their body to storage: no limit here
        # the same for paths with a variable part (an agent's job file writes)
        self.streamed_re = re.compile(streamed_re) if streamed_re else None

    def _is_streamed(self, path: str) -> bool:
        return path.startswith(self.streamed) or (
            self.streamed_re is not None and self.streamed_re.match(path) is not None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_streamed(str(scope.get("path", ""))):
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


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: an error may echo a lone surrogate."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _too_large(limit: int) -> JSONResponse:
    return _AsciiJSON(
        {"error": "ValidationError", "message": f"invalid body: too large (at most {limit} bytes)"},
        status_code=413,
    )


def create_app(core: CorePort | CoreService, storage: JobStorage, *,
               version: str = "0.1.0", users: UserRegistry | None = None,
               audit_log: Path | None = None, secrets_dir: Path | None = None) -> FastAPI:
    """The app; ``users``: the registry every user certificate must be in (None: the CA's
    signature alone, for tests that bring no registry); ``audit_log``: where the audit
    lines go (None: no audit log); ``secrets_dir``: where jobs' secrets are kept across
    restarts (``skyport.relay.secrets``; None: in memory)."""
    port = LocalCore(core) if isinstance(core, CoreService) else core
    relay = RelayHub(secrets=JobSecrets(secrets_dir))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        relay.secrets.start(job_over(port))  # a restart too: those of ended jobs go
        yield
        await relay.secrets.close()

    # every error answer is an ErrorBody (skyport.errors.SkyportError.to_dict)
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 422, 500, 502, 503)}
    # the docs and the schema are served below, behind a user certificate like the rest
    app = FastAPI(title="Sky Port", version=version, responses=errors,
                  openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.users = users

    @app.get("/openapi.json", include_in_schema=False)
    async def _openapi(who: User) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def _docs(who: User) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Sky Port API")

    @app.get("/redoc", include_in_schema=False)
    async def _redoc(who: User) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="Sky Port API")

    @app.exception_handler(SkyportError)
    async def _skyport_error(_: Request, exc: SkyportError) -> JSONResponse:
        return _AsciiJSON(exc.to_dict(), status_code=exc.http_status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug or a failing dependency: logged in full here, one clear line for the caller
        cause = getattr(exc, "cause", None) or exc  # Ray wraps an actor's exception
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _AsciiJSON(
            {"error": "SkyportError",
             "message": f"internal error: {type(cause).__name__}: {cause}"},
            status_code=500,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        err = ValidationError(loc, _shown(first.get("input")), msg)
        return _AsciiJSON(err.to_dict(), status_code=422)

    log_events = app.state.log_events = JobWaiters()  # logs -f waits for the next append
    app.include_router(jobs_router(port, storage, version, log_events))
    app.include_router(agents_router(port, storage, log_events))
    app.include_router(launches_router(port))
    app.include_router(checkpoints_router(port))
    app.include_router(idle_router(port))
    app.include_router(uploads_router(storage))
    app.include_router(bootstrap_router(port))
    app.include_router(budgets_router(port))
    app.state.relay = relay  # this process's streams, and the jobs' secrets (skyport.relay)
    app.include_router(relay_router(port, app.state.relay))
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES, streamed=("/v1/uploads/",),
                       streamed_re=r"^/agent/v1/jobs/[^/]+/files/")
    if audit_log is not None:
        app.add_middleware(AuditLog, path=audit_log)  # outermost: sees every refusal too
    return app


def _shown(value: Any) -> Any:
    """An invalid input as an error echoes it: short, and only what JSON can carry."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value[:200] + "..." if isinstance(value, str) and len(value) > 200 else value
    text = repr(value)
    return text[:200] + "..." if len(text) > 200 else text
