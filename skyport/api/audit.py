"""The audit log: one JSON line per call that changes something (``logs/audit.jsonl``).

Each line says who (the user's name, ``agent`` for a job token, null when
the caller proved nothing), what (method and path), which job, and the
result (status code and, for a refusal, the error's class)::

    {"time": "2026-12-02T08:00:00+00:00", "who": "alice", "method": "POST",
     "path": "/v1/jobs/1a2b3c4d/cancel", "job_id": "1a2b3c4d", "status": 200,
     "result": "ok"}

An ASGI middleware, so that refusals (401 before any route runs, 422 from
the body's validation) are logged as well as successes.  Reads (GET, HEAD)
are not logged, nor an agent's high-rate bookkeeping (heartbeats, log
appends, launch polls), which change no decision anyone would audit.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AuditLog"]

_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# agent calls made every few seconds by every node: bookkeeping, not decisions
_QUIET_SUFFIXES = ("/heartbeat", "/poll", "/read", "/next")
_QUIET_PARTS = ("/logs/", "/output")
_BODY_PEEK = 64 * 1024  # enough for an error body or a submitted job's answer


class AuditLog:
    """ASGI middleware appending one line per changing call to ``path``."""

    def __init__(self, app: ASGIApp, path: Path) -> None:
        self.app = app
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _CHANGING or _quiet(scope):
            await self.app(scope, receive, send)
            return
        status = 500
        body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and len(body) < _BODY_PEEK:
                body.extend(message.get("body", b"")[:_BODY_PEEK - len(body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._write(scope, status, bytes(body))

    def _write(self, scope: Scope, status: int, body: bytes) -> None:
        params = scope.get("path_params") or {}
        answer = _json(body)
        job_id = params.get("job_id") or (answer.get("id") if status == 201 else None)
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "who": (scope.get("state") or {}).get("who"),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "job_id": job_id,
            "status": status,
            "result": "ok" if status < 400 else str(answer.get("error") or "error"),
        }
        text = json.dumps(line, ensure_ascii=True) + "\n"  # one line, whatever a path holds
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)


def _quiet(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    return path.startswith("/agent/") and (
        path.endswith(_QUIET_SUFFIXES) or any(p in path for p in _QUIET_PARTS))


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
