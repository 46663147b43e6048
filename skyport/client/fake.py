"""An in-memory control plane behind ``httpx.MockTransport``, for tests of client code.

It answers the user routes of ``skyport/api/ROUTES.md`` from dictionaries:
no Ray, no TLS, no sockets.  A test drives the jobs by hand::

    fake = FakeControlPlane()
    client = fake.client()
    job = client.submit(spec)
    fake.set_state(job.id, JobState.RUNNING)
    fake.append_log(job.id, "stdout", b"hello\\n")
    fake.run_function(job.id)          # runs a function job's payload here

Errors are answered the way the real API answers them
(``{"error": ClassName, "message": ...}`` with the class's status).
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from skyport.client.core import Client
from skyport.errors import ConflictError, NotFoundError, SkyportError, ValidationError
from skyport.models import Event, Job, JobState, SubmitRequest
from skyport.runtime.contract import PAYLOAD_FILE, PAYLOAD_STORED_AS, RESULT_FILE, RESULT_STORED_AS

__all__ = ["FakeControlPlane"]

BASE_URL = "https://skyport.test"
LOG_CHUNK = 1024 * 1024


class FakeControlPlane:
    """The REST API's user side, in memory.  ``requests`` records every call made."""

    def __init__(self, username: str = "admin", role: str = "admin") -> None:
        self.username = username
        self.role = role
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.logs: dict[tuple[str, str], bytes] = {}
        self.requests: list[httpx.Request] = []
        self.status_info: dict[str, Any] = {
            "version": "0.1.0",
            "policy": "fcfs",
            "started_at": _now().isoformat(),
            "storage_url": "file:///tmp/skyport/storage",
            "gates": ["local"],
            "counts": {},
        }
        self.gate_info: list[dict[str, Any]] = [
            {
                "name": "local",
                "type": "local",
                "healthy": True,
                "flavors": [{"name": "local-4", "cpus": 4}],
                "capacity": {"cpus": 4, "gpus": 0},
            },
        ]
        self.timetable_info: dict[str, Any] = {
            "now": _now().isoformat(),
            "policy": "fcfs",
            "entries": [],
        }
        self._next_states: dict[str, deque[JobState]] = {}
        self._counter = 0

    # ------------------------------------------------------------------ test controls

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> Client:
        return Client(BASE_URL, transport=self.transport)

    def set_state(
        self, job_id: str, state: JobState, reason: str = "", exit_code: int | None = None
    ) -> Job:
        job = self.jobs[job_id]
        now = _now()
        update: dict[str, Any] = {
            "state": state,
            "reason": reason,
            "events": [*job.events, Event(time=now, state=state, reason=reason)],
        }
        if state.has_cluster() and job.started_at is None:
            update["started_at"] = now
        if state.is_terminal():
            update["ended_at"] = now
            update["exit_code"] = exit_code
        self.jobs[job_id] = job.model_copy(update=update)
        return self.jobs[job_id]

    def then(self, job_id: str, *states: JobState) -> None:
        """Each later ``GET /v1/jobs/{id}`` moves the job on to the next of ``states``."""
        self._next_states.setdefault(job_id, deque()).extend(states)

    def put_file(self, job_id: str, path: str, data: bytes) -> None:
        self.files.setdefault(job_id, {})[path] = data

    def append_log(self, job_id: str, stream: str, data: bytes) -> None:
        self.logs[(job_id, stream)] = self.logs.get((job_id, stream), b"") + data

    def run_function(self, job_id: str) -> Job:
        """Run a function job's payload here, as its node would, and finish the job."""
        from skyport.runtime.function import run

        payload = self.files[job_id][PAYLOAD_STORED_AS]
        self.set_state(job_id, JobState.RUNNING)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / PAYLOAD_FILE).write_bytes(payload)
            status = run(Path(tmp) / PAYLOAD_FILE, Path(tmp) / RESULT_FILE)
            self.put_file(job_id, RESULT_STORED_AS, (Path(tmp) / RESULT_FILE).read_bytes())
        if status == 0:
            return self.set_state(job_id, JobState.SUCCEEDED, "exit code 0", exit_code=0)
        return self.set_state(job_id, JobState.FAILED, f"exit code {status}", exit_code=status)

    # ------------------------------------------------------------------ routing

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        try:
            return self._route(request)
        except SkyportError as exc:
            return httpx.Response(exc.http_status, json=exc.to_dict())

    def _route(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        q = request.url.params
        if (method, path) == ("GET", "/v1/whoami"):
            return _json({"username": self.username, "role": self.role})
        if (method, path) == ("GET", "/v1/status"):
            counts: dict[str, int] = {}
            for job in self.jobs.values():
                counts[job.state.value] = counts.get(job.state.value, 0) + 1
            return _json({**self.status_info, "counts": counts})
        if (method, path) == ("GET", "/v1/gates"):
            return _json(self.gate_info)
        if (method, path) == ("GET", "/v1/timetable"):
            return _json(self.timetable_info)
        if (method, path) == ("POST", "/v1/jobs"):
            return _json(self._submit(json.loads(request.content)).summary(), status=201)
        if (method, path) == ("GET", "/v1/jobs"):
            wanted = set(q.get_list("state"))
            jobs = [
                j
                for j in self.jobs.values()
                if (q.get("all") == "true" or j.owner == self.username)
                and (not wanted or j.state.value in wanted)
            ]
            return _json([{**j.summary(), "events": []} for j in jobs])
        m = re.fullmatch(r"/v1/jobs/([^/]+)(/.*)?", path)
        if m is None:
            raise NotFoundError(f"no route {method} {path}")
        job_id, rest = unquote(m.group(1)), m.group(2) or ""
        job = self._job(job_id)
        if (method, rest) == ("GET", ""):
            return _json(self._advance(job_id).summary())
        if (method, rest) == ("POST", "/cancel"):
            if job.state.is_terminal():
                raise ConflictError(f"job {job_id} is already {job.state.value}")
            return _json(self.set_state(job_id, JobState.CANCELLED, "cancelled by user").summary())
        if method == "GET" and rest.startswith("/logs/"):
            stream = rest.removeprefix("/logs/")
            if stream not in ("stdout", "stderr"):
                raise ValidationError("stream", stream, "stdout or stderr")
            data = self.logs.get((job_id, stream), b"")
            offset = int(q.get("offset", "0"))
            return httpx.Response(
                200,
                content=data[offset : offset + LOG_CHUNK],
                headers={
                    "X-Skyport-Log-Size": str(len(data)),
                    "X-Skyport-Job-State": job.state.value,
                },
            )
        if (method, rest) == ("GET", "/files"):
            stored = self.files.get(job_id, {})
            return _json([{"path": p, "size": len(d)} for p, d in sorted(stored.items())])
        if method == "GET" and rest.startswith("/files/"):
            rel = unquote(rest.removeprefix("/files/"))
            try:
                return httpx.Response(200, content=self.files[job_id][rel])
            except KeyError:
                raise NotFoundError(f"job {job_id} has no file {rel}") from None
        raise NotFoundError(f"no route {method} {path}")

    def _job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFoundError(f"no job {job_id!r}") from None

    def _advance(self, job_id: str) -> Job:
        pending = self._next_states.get(job_id)
        if pending:
            state = pending.popleft()
            exit_code = None
            if state.is_terminal():
                exit_code = 0 if state is JobState.SUCCEEDED else 1
            return self.set_state(job_id, state, f"now {state.value.lower()}", exit_code)
        return self.jobs[job_id]

    def _submit(self, body: dict[str, Any]) -> Job:
        req = SubmitRequest.model_validate(body)
        self._counter += 1
        job_id = f"j{self._counter:04d}"
        now = _now()
        job = Job(
            id=job_id,
            owner=self.username,
            spec=req.spec,
            state=JobState.QUEUED,
            reason="submitted",
            submitted_at=now,
            planned_start_at=now + timedelta(minutes=5),
            events=[Event(time=now, state=JobState.QUEUED, reason="submitted")],
        )
        self.jobs[job_id] = job
        if req.payload_b64 is not None:
            self.put_file(job_id, PAYLOAD_STORED_AS, base64.b64decode(req.payload_b64))
        return job


def _json(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


def _now() -> datetime:
    return datetime.now(UTC)
