"""The Python client: a typed wrapper around the user REST API (``skyport/api/ROUTES.md``).

``connect()`` finds the running control plane of a state directory and
authenticates with a user certificate; every method mirrors one REST call.
An error response becomes the same ``SkyportError`` subclass the server
raised (``error_from_dict``), so a Python user and a CLI user see the same
message.  Every answer is parsed into its ``skyport.protocol`` model.  Tests
use ``skyport.client.testing.TestControlPlane``: the real API and Core in
this process, behind the client's ``transport``.

Where things come from (first match wins):

* the server URL: ``SKYPORT_URL``, else ``run/controlplane.json`` of the
  state directory (``home`` argument, else ``SKYPORT_HOME``, else ``~/.skyport``);
* the user: the ``user`` argument, else ``SKYPORT_USER``, else ``admin``;
* the certificate, key and CA: ``SKYPORT_CERT``, ``SKYPORT_KEY``,
  ``SKYPORT_CA``, else ``pki/users/<user>.crt|.key`` and ``pki/ca.crt``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote, unquote

import httpx
from pydantic import BaseModel, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from skyport.client.tls import NO_DELAY
from skyport.config import StateDir
from skyport.errors import (
    AuthenticationError,
    ConflictError,
    ControlPlaneError,
    NotFoundError,
    PermissionDeniedError,
    PkiError,
    SkyportError,
    StorageError,
    ValidationError,
    error_from_dict,
)
from skyport.models import Job, JobSpec, JobState, SubmitRequest, check_relative_path
from skyport.protocol import (
    MAX_BATCH,
    MAX_BUDGET,
    ArraySubmitRequest,
    ArrayView,
    BatchSubmitRequest,
    BudgetView,
    CancelAnswer,
    CancelRequest,
    CheckpointOpened,
    CheckpointsView,
    ClusterView,
    CostView,
    ErrorBody,
    FileEntry,
    GateView,
    KillNodeAnswer,
    PreemptAnswer,
    StatusView,
    TimetableView,
    UploadAnswer,
    WhoAmI,
)

__all__ = ["Client", "LogChunk", "StoredFile", "WaitTimeoutError", "connect"]

DEFAULT_USER = "admin"
DEFAULT_TIMEOUT_S = 30.0
COMMIT_TIMEOUT_S = 900.0  # a large file's last part to its answer (storage assembling it)
LOG_STREAMS = ("stdout", "stderr")
LONG_POLL_S = 25.0  # the server's bound on one long-poll (skyport.core.waiters.MAX_WAIT_S)
_PAGE = 500  # the most jobs one GET /v1/jobs answers (skyport.api.routes.jobs.MAX_PAGE)

# Used only when an error response carries no ``{"error", "message"}`` body.
_STATUS_ERRORS: dict[int, type[SkyportError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    503: ControlPlaneError,
}


T = TypeVar("T")


UPLOAD_CHUNK = 8 << 20
DIR_ENTRY_NAME = "file"  # each file of a directory input: its place is in the list


class WaitTimeoutError(SkyportError, TimeoutError):
    """``wait`` gave up before the job reached a terminal state (the job goes on)."""


class LogChunk(NamedTuple):
    """Bytes of one log stream from an offset, the stream's full size, the job's state."""

    data: bytes
    size: int
    state: JobState


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class StoredFile(NamedTuple):
    """One file under a job's storage prefix (``sha256``: recorded when it was written)."""

    path: str
    size: int
    sha256: str | None = None


Progress = Callable[[str, int, int], object]
"""``progress(name, done, total)``: bytes of ``name`` moved so far."""

SHA256_HEADER = "X-Skyport-Sha256"
PART_SUFFIX = ".skyport-part"  # a fetch in progress; the next fetch goes on from it


class Client:
    """One authenticated connection to a control plane's REST API."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        home: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.home = home
        self.ssl_context = ssl_context  # the relay's sockets dial with it (skyport.relay)
        verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._http = httpx.Client(
            base_url=self.url,
            verify=verify,
            transport=transport or httpx.HTTPTransport(verify=verify, socket_options=NO_DELAY),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        )

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            where = f"for {self.home}" if self.home is not None else f"at {self.url}"
            raise ControlPlaneError(
                f"no control plane running {where} (run 'skyport start'): "
                f"cannot reach {self.url}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            raise _error_from_response(response, method, path)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ControlPlaneError(
                f"{method} {path}: the server answered {response.status_code} with a body "
                f"that is not JSON: {response.text[:200]!r}"
            ) from exc

    def call(self, method: str, path: str, answer: type[T] | Any, *,
             body: BaseModel | None = None, **kwargs: Any) -> T:
        """Any JSON route: send ``body`` (a ``skyport.protocol`` model), parse the answer.

        ``answer`` is the route's answer type (a model, or e.g. ``list[Job]``); a
        new REST call needs no method here: ``client.call("GET", "/v1/x", X)``.
        """
        if body is not None:
            kwargs["json"] = body.model_dump(mode="json")
        data = self._json(method, path, **kwargs)
        try:
            parsed: T = TypeAdapter(answer).validate_python(data)
            return parsed
        except PydanticValidationError as exc:
            raise ControlPlaneError(
                f"{method} {path}: the answer does not fit {getattr(answer, '__name__', answer)} "
                f"(a server of another version?): {exc}") from exc

    # ------------------------------------------------------------------ calls

    def whoami(self) -> WhoAmI:
        """The user name and role of the certificate this client presents."""
        return self.call("GET", "/v1/whoami", WhoAmI)

    def submit(self, spec: JobSpec, payload: bytes | None = None,
               progress: Progress | None = None) -> Job:
        """Submit a job; ``payload`` is a function job's cloudpickled call.

        Inputs that are files on this machine (``file://`` URLs) are uploaded
        first (streamed; ``progress`` hears how far), read with the rights of
        whoever runs this client: the control plane never reads a user's local
        path itself.
        """
        if spec.array is not None:
            raise ValidationError("array", spec.array,
                                  "one job here: Client.submit_array submits an array")
        spec = self._uploaded(spec, progress)
        body = SubmitRequest(spec=spec, payload_b64=_b64(payload) if payload is not None else None)
        return self.call("POST", "/v1/jobs", Job, body=body)

    def submit_many(self, specs: Sequence[JobSpec],
                    payloads: Sequence[bytes | None] | None = None) -> list[Job]:
        """Submit several jobs in one call (at most ``MAX_BATCH``), stored in one
        transaction: all of them, or none (the error names the first refused one as
        ``jobs[i]``).  Local input files are uploaded first, as for ``submit``."""
        if not 1 <= len(specs) <= MAX_BATCH:
            raise ValidationError("specs", len(specs), f"1 to {MAX_BATCH} jobs in one call")
        if payloads is not None and len(payloads) != len(specs):
            raise ValidationError("payloads", len(payloads), f"one per spec ({len(specs)})")
        jobs = []
        for i, spec in enumerate(specs):
            if spec.array is not None:
                raise ValidationError(f"jobs[{i}].array", spec.array,
                                      "single jobs here: Client.submit_array submits an array")
            payload = payloads[i] if payloads is not None else None
            jobs.append(SubmitRequest(spec=self._uploaded(spec, None),
                                      payload_b64=_b64(payload) if payload is not None
                                      else None))
        return self.call("POST", "/v1/jobs/batch", list[Job], body=BatchSubmitRequest(jobs=jobs))

    def _uploaded(self, spec: JobSpec, progress: Progress | None) -> JobSpec:
        if any(_local_file(u) or _local_dir(u) for u in spec.inputs):
            spec = spec.model_copy(update={"inputs": tuple(
                self.upload(p, progress) if (p := _local_file(u))
                else self.upload_dir(d, progress) if (d := _local_dir(u)) else u
                for u in spec.inputs)})
        return spec

    def submit_array(self, spec: JobSpec, payloads: Sequence[bytes] | None = None,
                     progress: Progress | None = None) -> ArrayView:
        """Submit a job array (``spec.array``, e.g. ``"0-9999%50"``) in one call.

        Its tasks are the jobs ``ArrayView.task_ids()``; a function array
        (``fn.map``) sends one cloudpickled call per task, in index order.
        """
        if spec.array is None:
            raise ValidationError("array", None, "indices, e.g. 0-9999 (submit() takes one job)")
        body = ArraySubmitRequest(
            spec=self._uploaded(spec, progress),
            payloads_b64=None if payloads is None else [_b64(p) for p in payloads])
        return self.call("POST", "/v1/arrays", ArrayView, body=body)

    def array(self, array_id: str) -> ArrayView:
        """A job array: its indices and its tasks' count per state."""
        return self.call("GET", f"/v1/arrays/{_seg(array_id)}", ArrayView)

    def upload_dir(self, path: str | Path, progress: Progress | None = None) -> str:
        """Send a local directory, recursively: each file, then the list of them.

        The input URL names that list (``upload-dir:<sha256>/<name>``, JSON of
        ``{"files": [{"path", "sha256", "size"}]}``); the control plane stages every
        file under ``inputs/<name>/`` with its relative path.  A symbolic link that
        leads out of the directory, or anything but files and directories, is
        refused before anything is sent.
        """
        from skyport.dirinputs import dir_manifest, local_tree

        root = Path(path)
        files = local_tree(root)  # ValidationError naming the first hostile entry
        entries = []
        for rel, file in files:
            url = self.upload(file, progress, name=DIR_ENTRY_NAME)
            entries.append({"path": rel, "sha256": url.split(":", 1)[1].split("/", 1)[0],
                            "size": file.stat().st_size})
        manifest = dir_manifest(entries)
        digest = hashlib.sha256(manifest).hexdigest()
        name = root.resolve().name
        where = f"/v1/uploads/{digest}/{quote(name, safe='')}"
        if self._http.request("HEAD", where).status_code != 200:
            self.call("PUT", where, UploadAnswer, content=manifest)
        return f"upload-dir:{digest}/{name}"

    def upload(self, path: str | Path, progress: Progress | None = None,
               name: str | None = None) -> str:
        """Send a local file into your own upload area; the input URL that names it."""
        path = Path(path)
        name = name or path.name
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(UPLOAD_CHUNK):
                digest.update(chunk)
        where = f"/v1/uploads/{digest.hexdigest()}/{quote(name, safe='')}"
        if self._http.request("HEAD", where).status_code != 200:  # the same file is sent once
            total = path.stat().st_size

            def body() -> Iterator[bytes]:
                done = 0
                with path.open("rb") as f:
                    while chunk := f.read(UPLOAD_CHUNK):
                        done += len(chunk)
                        if progress is not None:
                            progress(path.name, done, total)
                        yield chunk

            # the answer comes once storage has the whole file (an object store
            # assembles its parts then): wait for it longer than for an ordinary call
            return self.call("PUT", where, UploadAnswer, content=body(),
                             timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, read=COMMIT_TIMEOUT_S)).url
        return f"upload:{digest.hexdigest()}/{name}"

    def jobs(self, all: bool = False, states: Iterable[JobState | str] | None = None, *,
             limit: int | None = None, newest: bool = False) -> list[Job]:
        """Your jobs (``all=True``: everyone's, admins only), optionally in some states.

        ``newest``: newest first; ``limit``: at most that many (only those are fetched).
        """
        if limit is not None and limit < 1:
            raise ValidationError("limit", limit, "at least 1 job")
        params: list[tuple[str, str]] = []
        if all:
            params.append(("all", "true"))
        for state in states or ():
            params.append(("state", _state(state).value))
        if newest:
            params.append(("order", "newest"))
        # the answer comes in pages (X-Skyport-Next-After), without scripts
        out: list[Job] = []
        after: str | None = None
        while True:
            page_params = params + ([("after", after)] if after else [])
            if limit is not None:  # no bigger a page than what is still wanted
                page_params.append(("limit", str(min(limit - len(out), _PAGE))))
            response = self._request("GET", "/v1/jobs", params=page_params)
            try:
                out.extend(TypeAdapter(list[Job]).validate_json(response.content))
            except PydanticValidationError as exc:
                raise ControlPlaneError(f"GET /v1/jobs: the answer is not a list of jobs "
                                        f"(a server of another version?): {exc}") from exc
            after = response.headers.get("x-skyport-next-after")
            if not after or (limit is not None and len(out) >= limit):
                return out

    def job(self, job_id: str) -> Job:
        """One job, with its event history."""
        return self.call("GET", f"/v1/jobs/{_seg(job_id)}", Job)

    def cancel(self, job_id: str) -> Job:
        return self.call("POST", f"/v1/jobs/{_seg(job_id)}/cancel", Job)

    def cancel_many(self, job_ids: Iterable[str] = (), *,
                    states: Iterable[JobState | str] | None = None, name: str | None = None,
                    all: bool = False) -> CancelAnswer:  # noqa: A002 - scancel's word
        """Cancel many jobs in one call: these ids, and/or yours in ``states``, whose name
        matches ``name`` (a shell pattern), or ``all`` of yours."""
        body = CancelRequest(job_ids=list(job_ids), name=name, all=all,
                             states=[_state(s) for s in states] if states else None)
        return self.call("POST", "/v1/jobs/cancel", CancelAnswer, body=body)

    def hold(self, job_id: str) -> Job:
        """Keep a QUEUED job out of planning (``wait_reason`` Held) until ``release``."""
        return self.call("POST", f"/v1/jobs/{_seg(job_id)}/hold", Job)

    def release(self, job_id: str) -> Job:
        return self.call("POST", f"/v1/jobs/{_seg(job_id)}/release", Job)

    # -- checkpoints, requeues, injected failures (skyport.core.recovery) ----------

    def checkpoint(self, job_id: str) -> CheckpointOpened:
        """Ask a RUNNING job for a checkpoint now: the version and id of the one opened."""
        return self.call("POST", f"/v1/jobs/{_seg(job_id)}/checkpoints", CheckpointOpened)

    def checkpoints(self, job_id: str) -> CheckpointsView:
        """The latest complete checkpoint (``latest.json``, or None) and any pending version."""
        return self.call("GET", f"/v1/jobs/{_seg(job_id)}/checkpoints", CheckpointsView)

    def requeue(self, job_id: str) -> Job:
        """Requeue a job by hand (a RUNNING one checkpoints first); it resumes from there."""
        return self.call("POST", f"/v1/jobs/{_seg(job_id)}/requeue", Job)

    def cancel_after_checkpoint(self, job_id: str) -> Job:
        """Cancel a job once a last checkpoint is stored (at once if it is not RUNNING)."""
        return self.call("POST", f"/v1/jobs/{_seg(job_id)}/cancel-checkpointed", Job)

    def debug_kill_node(self, job_id: str, node: int | None = None) -> KillNodeAnswer:
        """Admins: SIGKILL one node of the job's cluster (default: its last node)."""
        params = {} if node is None else {"node": node}
        return self.call("POST", f"/v1/debug/jobs/{_seg(job_id)}/kill-node", KillNodeAnswer,
                         params=params)

    def debug_preempt(self, job_id: str, notice_s: float = 20.0) -> PreemptAnswer:
        """Admins: a preemption notice; the nodes are reclaimed a little after ``notice_s``."""
        return self.call("POST", f"/v1/debug/jobs/{_seg(job_id)}/preempt", PreemptAnswer,
                         params={"notice_s": notice_s})

    def logs(self, job_id: str, stream: str = "stdout", offset: int = 0,
             wait_s: float = 0.0) -> LogChunk:
        """Log bytes from ``offset`` (at most 1 MiB), the stream's size and the job's state.

        ``wait_s`` (at most ``LONG_POLL_S``): with nothing past ``offset`` yet and the
        job not ended, the server waits up to that long for the next append or state
        report (``skyport logs -f``)."""
        if stream not in LOG_STREAMS:
            raise ValidationError("stream", stream, "one of " + ", ".join(LOG_STREAMS))
        if offset < 0:
            raise ValidationError("offset", offset, "a byte offset >= 0")
        if not 0 <= wait_s <= LONG_POLL_S:
            raise ValidationError("wait_s", wait_s, f"seconds from 0 to {LONG_POLL_S}")
        params: dict[str, Any] = {"offset": offset}
        if wait_s:
            params["wait_s"] = wait_s
        response = self._request(
            "GET", f"/v1/jobs/{_seg(job_id)}/logs/{stream}", params=params,
            timeout=httpx.Timeout(DEFAULT_TIMEOUT_S + wait_s),
        )
        try:
            size = int(response.headers.get("X-Skyport-Log-Size", offset + len(response.content)))
            state = JobState(response.headers["X-Skyport-Job-State"])
        except (KeyError, ValueError) as exc:
            raise ControlPlaneError(
                f"log answer for job {job_id} lacks valid X-Skyport-Log-Size and "
                f"X-Skyport-Job-State headers: {dict(response.headers)}"
            ) from exc
        return LogChunk(response.content, size, state)

    def log_tail(self, job_id: str, stream: str = "stderr", limit: int = 2000) -> str:
        """The last ``limit`` bytes of a job's log, as text (a failed job's why, in its words)."""
        if limit <= 0:
            raise ValidationError("limit", limit, "a byte count > 0")
        first = self.logs(job_id, stream)
        data = first.data
        if first.size > len(data) or len(data) > limit:
            data = self.logs(job_id, stream, offset=max(0, first.size - limit)).data
        return data[-limit:].decode(errors="replace")

    def files(self, job_id: str) -> list[StoredFile]:
        """Every file under the job's storage prefix (inputs, outputs, logs, ...)."""
        data: list[FileEntry] = self.call("GET", f"/v1/jobs/{_seg(job_id)}/files",
                                          list[FileEntry])
        return [StoredFile(f.path, f.size, f.sha256) for f in data]

    def download(self, job_id: str, path: str) -> bytes:
        """The bytes of one stored file, e.g. ``outputs/result.txt`` (small files: see
        ``download_to`` for large ones)."""
        _checked_path(path)
        return self._request("GET", f"/v1/jobs/{_seg(job_id)}/files/{quote(path)}").content

    def download_to(self, job_id: str, path: str, target: str | Path,
                    progress: Progress | None = None) -> Path:
        """Stream one stored file to ``target``, checked against its recorded sha256.

        The bytes go to ``<target>.skyport-part`` first; an interrupted download
        leaves it, and the next call goes on from its end (``Range``).  A content
        whose digest differs from the one the control plane recorded is deleted
        and raises ``StorageError``; ``target`` then is not touched.
        """
        _checked_path(path)
        target = Path(target)
        part = target.with_name(target.name + PART_SUFFIX)
        have = part.stat().st_size if part.exists() else 0
        digest = hashlib.sha256()
        if have:
            with part.open("rb") as f:
                while chunk := f.read(UPLOAD_CHUNK):
                    digest.update(chunk)
        url = f"/v1/jobs/{_seg(job_id)}/files/{quote(path)}"
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with self._http.stream("GET", url, headers=headers) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise _error_from_response(resp, "GET", url)
                if have and resp.status_code != 206:  # the whole file came: start again
                    have, digest = 0, hashlib.sha256()
                total = int(resp.headers.get("X-Skyport-Size") or 0)
                expected = resp.headers.get(SHA256_HEADER)
                done = have
                with part.open("ab" if have else "wb") as f:
                    for chunk in resp.iter_bytes(UPLOAD_CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(path, done, total)
        except httpx.TransportError as exc:
            raise ControlPlaneError(
                f"GET {url} broke off ({exc or type(exc).__name__}); the part is kept in "
                f"{part}: fetch again to go on from byte {part.stat().st_size}") from exc
        if expected is not None and digest.hexdigest() != expected:
            part.unlink(missing_ok=True)
            raise StorageError(f"{path}: what arrived has sha256 {digest.hexdigest()}, the "
                               f"control plane recorded {expected}; fetch it again")
        os.replace(part, target)
        return target

    def fetch(self, job_id: str, dest_dir: str | Path,
              progress: Progress | None = None, prefix: str = "") -> list[Path]:
        """Download every stored file (under ``prefix``, e.g. ``outputs/``) into
        ``dest_dir``, keeping relative paths.

        Each file is streamed and checked against its recorded sha256; a file
        already there with that digest is not fetched again, and one broken off
        goes on where it stopped, so running ``fetch`` again resumes it.
        """
        dest = Path(dest_dir)
        written: list[Path] = []
        for stored in self.files(job_id):
            if not stored.path.startswith(prefix):
                continue
            _checked_path(stored.path)  # the server's list must not escape dest either
            target = dest.joinpath(*stored.path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            if not (stored.sha256 is not None and target.is_file()
                    and target.stat().st_size == stored.size
                    and _file_sha256(target) == stored.sha256):
                self.download_to(job_id, stored.path, target, progress)
            written.append(target)
        return written

    def status(self) -> StatusView:
        return self.call("GET", "/v1/status", StatusView)

    def gates(self) -> list[GateView]:
        return self.call("GET", "/v1/gates", list[GateView])

    def timetable(self) -> TimetableView:
        return self.call("GET", "/v1/timetable", TimetableView)

    def clusters(self) -> list[ClusterView]:
        """Every gate's clusters (yours; an admin's: all) with job, age, state, cost so far."""
        return self.call("GET", "/v1/clusters", list[ClusterView])

    def budget(self, user: str | None = None) -> BudgetView:
        """Your budget (admins: ``user``'s): limit, period, spent, committed, remaining."""
        return self.call("GET", "/v1/budget", BudgetView,
                         params={} if user is None else {"user": user})

    def set_budget(self, user: str, limit: float, period: str = "month") -> BudgetView:
        """Admins: what ``user`` may spend per ``period`` (``month``, ``week`` or ``total``)."""
        if not isinstance(limit, int | float) or not math.isfinite(limit):
            # JSON cannot carry it: said here in the server's words
            raise ValidationError("limit", limit, f"a finite amount from 0 to {MAX_BUDGET:g}")
        if not user or "/" in user or user in (".", ".."):
            raise ValidationError("user", user, "a user name such as 'skyport user list' shows")
        return self.call("PUT", f"/v1/budgets/{quote(user, safe='')}", BudgetView,
                         json={"limit": limit, "period": period})

    def cost(self, user: str | None = None, since: str | None = None,
             by: str = "gate") -> CostView:
        """What clusters cost while jobs ran since ``since`` (default: this month), grouped."""
        params = {"by": by, **({"user": user} if user else {}),
                  **({"since": since} if since else {})}
        return self.call("GET", "/v1/cost", CostView, params=params)

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> Job:
        """Block until the job is terminal and return it.

        Long-polls ``GET /v1/jobs/{id}/wait``: the server answers as soon as the
        job ends (the Core wakes the call on the transition), or after at most
        ``LONG_POLL_S``, and the client asks again.  A server with too many
        waiters answers at once; the client then sleeps ``poll_s`` between
        calls.  Raises ``WaitTimeoutError`` after ``timeout`` seconds (the job
        itself is not touched).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = LONG_POLL_S if deadline is None else \
                max(0.0, min(LONG_POLL_S, deadline - time.monotonic()))
            asked = time.monotonic()
            job: Job = self.call("GET", f"/v1/jobs/{_seg(job_id)}/wait", Job,
                            params={"timeout_s": round(step, 3)},
                            timeout=httpx.Timeout(DEFAULT_TIMEOUT_S + step))
            if job.state.is_terminal():
                return job
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id} is still {job.state.value} after waiting {timeout} s"
                )
            if now - asked < step / 2:  # answered early, not terminal: the server is busy
                time.sleep(poll_s if deadline is None else min(poll_s, deadline - now))


def connect(
    home: str | Path | None = None,
    user: str | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Client:
    """A client for the control plane of ``home`` (see the module docstring for lookups)."""
    state = StateDir.find(home)
    url = os.environ.get("SKYPORT_URL") or _read_url(state)
    if transport is not None:  # tests: no TLS files needed
        return Client(url, transport=transport, timeout_s=timeout_s, home=state.root)
    username = user or os.environ.get("SKYPORT_USER") or DEFAULT_USER
    default_cert, default_key = state.user_cert(username)
    cert = Path(os.environ.get("SKYPORT_CERT") or default_cert)
    key = Path(os.environ.get("SKYPORT_KEY") or default_key)
    ca = Path(os.environ.get("SKYPORT_CA") or state.pki / "ca.crt")
    for label, path in (("certificate", cert), ("key", key), ("CA certificate", ca)):
        if not path.is_file():
            raise PkiError(
                f"no {label} for user {username!r} at {path} (run 'skyport user add "
                f"{username}' on the control plane, or set SKYPORT_CERT, SKYPORT_KEY, SKYPORT_CA)"
            )
    return Client(
        url, ssl_context=_ssl_context(ca, cert, key), timeout_s=timeout_s, home=state.root
    )


def _read_url(state: StateDir) -> str:
    path = state.address_path
    try:
        url = json.loads(path.read_text())["url"]
    except FileNotFoundError as exc:
        raise ControlPlaneError(
            f"no control plane running for {state.root} (run 'skyport start')"
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ControlPlaneError(
            f"no control plane running for {state.root} (run 'skyport start'): "
            f"{path} is unreadable: {exc}"
        ) from exc
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ControlPlaneError(f"{path} holds no valid url: {url!r}")
    return url


def _ssl_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    from skyport.client.tls import client_ssl_context  # one place decides the TLS policy

    return client_ssl_context(ca, cert, key)


def _error_from_response(response: httpx.Response, method: str, path: str) -> SkyportError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body and "message" in body:
        try:
            parsed = ErrorBody.model_validate(body)
        except PydanticValidationError:
            pass  # not ours after all (a proxy's JSON): mapped by status below
        else:
            return error_from_dict(parsed.model_dump(exclude_unset=True))
    cls = _STATUS_ERRORS.get(response.status_code, SkyportError)
    text = response.text.strip()[:300] or response.reason_phrase
    return cls(f"{method} {path} failed with HTTP {response.status_code}: {text}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _state(value: JobState | str) -> JobState:
    try:
        return JobState(str(getattr(value, "value", value)).upper())
    except ValueError as exc:
        allowed = "one of " + ", ".join(s.value for s in JobState)
        raise ValidationError("state", value, allowed) from exc


def _seg(job_id: str) -> str:
    """A job id as one URL path segment (it cannot smuggle in '/' or '..')."""
    if not job_id or job_id in (".", "..") or "/" in job_id:
        raise ValidationError("job id", job_id, "a job id such as the one 'skyport submit' printed")
    return quote(job_id, safe="")


def _checked_path(path: str) -> str:
    try:
        return check_relative_path(path, "path")
    except ValueError as exc:
        raise ValidationError("path", path, "a relative path inside the job's prefix") from exc


def _local_file(url: str) -> Path | None:
    """The local file a ``file://`` input names, if it is one on this machine."""
    if not url.startswith("file://"):
        return None
    path = Path(unquote(url[len("file://"):]))
    return path if path.is_file() else None


def _local_dir(url: str) -> Path | None:
    """The local directory a ``file://`` input names, if it is one on this machine."""
    if not url.startswith("file://"):
        return None
    path = Path(unquote(url[len("file://"):]))
    return path if path.is_dir() else None
