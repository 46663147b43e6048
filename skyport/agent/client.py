"""``AgentClient``: the agent's side of the REST protocol (``PROTOCOL.md``).

Every call carries the job's bearer token and checks the server certificate
against the CA PEM from the bootstrap.  Connection failures and 502/503/504
answers are retried with exponential backoff for up to ``retry_for_s``
(default 10 minutes), so that an agent rides out a control-plane restart;
after that the call raises ``ControlPlaneError``.  An error answer is turned
back into the ``SkyportError`` subclass the server named.  Nothing here logs
headers, so the token never reaches a log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from skyport.agent.ranged import SPLIT_MIN, download_ranges
from skyport.client.tls import NO_DELAY
from skyport.errors import (
    ConfigError,
    ControlPlaneError,
    SkyportError,
    StorageError,
    error_from_dict,
)
from skyport.models import Job
from skyport.protocol import (
    CheckpointOrder,
    DirectReadAnswer,
    DirectWriteAnswer,
    Empty,
    ErrorBody,
    FileEntry,
    HeartbeatAnswer,
    HelloAnswer,
    LatestAnswer,
    LaunchCreated,
    LaunchPoll,
    LaunchRead,
    NodeFacts,
    NodeNames,
    PartAnswer,
    SecretAnswer,
    SizeAnswer,
)

__all__ = ["AgentClient"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_RETRY_STATUS = frozenset({502, 503, 504})
_CHUNK = 8 << 20
SHA256_HEADER = "X-Skyport-Sha256"
COMMIT_TIMEOUT_S = 900.0
PARTS_IN_FLIGHT = 4  # parts of one file sent at once on the direct path (memory: 5 parts)


def file_sha256(path: Path, want_digest: bool = False) -> Any:
    """The sha256 of a file: its hex digest, or (``want_digest``) the hash object to go on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest if want_digest else digest.hexdigest()


_PIECE = 1 << 20  # what moves between the socket thread and the disk/hash thread
_AHEAD = 4  # pieces queued between them: memory per transfer stays a few MB


class _Sink:
    """Writes and hashes pieces in a thread of its own, a few pieces behind the caller."""

    def __init__(self, f: Any, digest: Any, progress: Callable[[int], object]) -> None:
        self._q: queue.Queue[bytes | None] = queue.Queue(_AHEAD)
        self._error: BaseException | None = None

        def drain() -> None:
            try:
                while (piece := self._q.get()) is not None:
                    f.write(piece)
                    digest.update(piece)
                    progress(len(piece))
            except BaseException as exc:  # reported to the caller at put() or exit
                self._error = exc
                while self._q.get() is not None:
                    pass

        self._thread = threading.Thread(target=drain, name="sink", daemon=True)
        self._thread.start()

    def put(self, piece: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(piece)

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def _read_ahead(src: Path, digest: Any) -> Iterator[bytes]:
    """The pieces of ``src``, read and hashed by a thread of its own a few pieces ahead."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(_AHEAD)
    stop = threading.Event()

    def fill() -> None:
        try:
            with open(src, "rb") as f:
                while not stop.is_set() and (piece := f.read(_PIECE)):
                    digest.update(piece)
                    q.put(piece)
            q.put(None)
        except BaseException as exc:
            q.put(exc)

    thread = threading.Thread(target=fill, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


class _Retry(Exception):
    """An answer worth retrying (the control plane is restarting or overloaded)."""


class AgentClient:
    def __init__(self, control_url: str, job_id: str, token: str, *, ca_pem: str = "",
                 timeout_s: float = 30.0, retry_for_s: float = 600.0, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            verify: ssl.SSLContext | bool = (ssl.create_default_context(cadata=ca_pem)
                                             if ca_pem else True)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"the CA PEM given to the agent is not usable: {exc}") from exc
        self.base_url = f"{control_url.rstrip('/')}/agent/v1/jobs/{job_id}"
        # the relay (skyport.relay.node) dials the same control plane with the same token
        self.control_url, self.job_id, self.token = control_url, job_id, token
        self.ssl_context = verify if isinstance(verify, ssl.SSLContext) else None
        self.over_network = transport is None  # False: an in-process test app, no sockets
        self.retry_for_s = retry_for_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._clock = clock
        self.log_base: dict[str, int] = {}  # set by the checkpointer on a restart
        self._http = httpx.Client(
            base_url=self.base_url, verify=verify, timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport or httpx.HTTPTransport(verify=verify, socket_options=NO_DELAY))
        # object storage, reached by presigned URLs: never the control plane's token nor
        # its CA (the storage's certificate is a public one, or the system's)
        self._storage = httpx.Client(timeout=timeout_s, limits=httpx.Limits(max_connections=32))
        self._direct: bool | None = None  # None: not asked yet; False: stream via /files

    def close(self) -> None:
        self._http.close()
        self._storage.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol calls ---------------------------------------------------------

    def hello(self, rank: int, node_name: str, hostname: str, pid: int,
              facts: NodeFacts | None = None) -> HelloAnswer:
        body: dict[str, Any] = {"node_name": node_name, "hostname": hostname, "pid": pid}
        if facts is not None:
            body["facts"] = facts.model_dump()
        return self._call(HelloAnswer, "POST", f"/nodes/{rank}/hello", json=body)

    def heartbeat(self, rank: int) -> HeartbeatAnswer:
        return self._call(HeartbeatAnswer, "POST", f"/nodes/{rank}/heartbeat", json={})

    def set_state(self, state: str, reason: str = "") -> Job:
        return self._call(Job, "POST", "/state", json={"state": state, "reason": reason})

    def exit(self, exit_code: int, timed_out: bool = False, reason: str = "",
             output_problems: list[str] | None = None) -> Job:
        return self._call(Job, "POST", "/exit", json={
            "exit_code": exit_code, "timed_out": timed_out, "reason": reason,
            "output_problems": list(output_problems or [])})

    def inputs(self) -> list[str]:
        return self._call(list[str], "GET", "/inputs")

    def files(self) -> list[FileEntry]:
        """The job's files this agent may read (script, inputs, checkpoints), with sizes."""
        return self._call(list[FileEntry], "GET", "/files")

    def post_log(self, stream: str, offset: int, data: bytes) -> SizeAnswer:
        offset += self.log_base.get(stream, 0)  # a restarted job's logs go on after the old
        return self._call(SizeAnswer, "POST", f"/logs/{stream}", params={"offset": offset},
                          content=data)

    def download(self, path: str, dest: Path,
                 progress: Callable[[int], object] = lambda n: None,
                 size: int | None = None) -> int:
        """Stream ``/files/<path>`` to ``dest`` (atomically); the number of bytes.

        A broken transfer goes on from where it stopped (``Range``); the whole is
        checked against the sha256 the control plane recorded.  ``progress(n)`` is
        told of each ``n`` new bytes.  A big file (``size`` known) from the control
        plane comes over several connections at once (``skyport.agent.ranged``).
        """
        tmp = dest.with_name(dest.name + ".part")
        tmp.unlink(missing_ok=True)
        if size is not None and size >= SPLIT_MIN and self.over_network:
            if self._direct is None:
                self._direct_read(path)  # asks once whether storage is reached directly
            if self._direct is False:
                try:
                    download_ranges(self._http, lambda r: self._check(r, read=True),
                                    self._retrying, path, tmp, size, progress)
                except StorageError as exc:
                    log.warning("%s; fetching it again over one connection", exc)
                    tmp.unlink(missing_ok=True)
                else:
                    os.replace(tmp, dest)
                    return size
        direct = self._direct is not False

        def attempt() -> int:
            nonlocal direct
            have = tmp.stat().st_size if tmp.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            where: DirectReadAnswer | None = None
            if direct:  # a fresh URL on every try: one that expired meanwhile is not reused
                where = self._direct_read(path)
                if where is None:
                    direct = False
            with (self._storage.stream("GET", str(where.url), headers=headers)
                  if where is not None
                  else self._http.stream("GET", f"/files/{path}", headers=headers)) as resp:
                if where is not None:
                    self._check_storage(resp, f"GET {path}")
                else:
                    self._check(resp, read=True)
                if have and resp.status_code != 206:
                    have = 0  # the server sent it all again
                digest = file_sha256(tmp, want_digest=True) if have else hashlib.sha256()
                with open(tmp, "ab" if have else "wb") as f, _Sink(f, digest, progress) as sink:
                    # hashed and written by another thread while this one reads the socket
                    # (both release the GIL): the file is never read again
                    for chunk in resp.iter_bytes(_PIECE):
                        sink.put(chunk)
                expected = (where.sha256 if where is not None
                            else resp.headers.get(SHA256_HEADER))
            if expected is not None and (got := digest.hexdigest()) != expected:
                tmp.unlink(missing_ok=True)
                raise _Retry(f"sha256 of {path} is {got}, the control plane recorded "
                             f"{expected}")
            size = tmp.stat().st_size
            os.replace(tmp, dest)
            return size

        return self._retrying(f"GET /files/{path}", attempt)

    def put_file(self, path: str, src: Path,
                 progress: Callable[[int], object] = lambda n: None) -> SizeAnswer:
        """Upload ``src`` as ``/files/<path>``, streamed, re-read from the start on each try.

        The control plane answers the sha256 it stored; one that differs from what
        was read here is retried like a broken connection.  On object storage the
        bytes go there directly (``_put_direct``).
        """
        if self._direct is not False:
            size = src.stat().st_size
            plan = self._direct_plan(path, size)
            if plan is not None:
                return self._put_direct(path, src, size, plan, progress)

        def attempt() -> SizeAnswer:
            digest = hashlib.sha256()

            def body() -> Iterator[bytes]:
                # read and hashed by another thread while this one sends the last piece
                for chunk in _read_ahead(src, digest):
                    progress(len(chunk))
                    yield chunk

            # the answer comes once storage has it whole (an object store assembles
            # the parts then): a longer read timeout than an ordinary call's
            resp = self._http.put(f"/files/{path}", content=body(),
                                  headers={"Content-Length": str(src.stat().st_size)},
                                  timeout=httpx.Timeout(self._http.timeout.connect,
                                                        read=COMMIT_TIMEOUT_S))
            self._check(resp)
            answer: SizeAnswer = _parse(SizeAnswer, resp.json(), f"PUT /files/{path}")
            if answer.sha256 is not None and answer.sha256 != digest.hexdigest():
                raise _Retry(f"the control plane stored {path} with sha256 {answer.sha256}, "
                             f"not {digest.hexdigest()}")
            return answer

        return self._retrying(f"PUT /files/{path}", attempt)

    # -- the direct data path (object storage through presigned URLs) ---------------

    def _direct_read(self, path: str) -> DirectReadAnswer | None:
        got = self._direct_call(DirectReadAnswer, "/direct/read", {"path": path})
        if got is not None and got.url:
            return got
        self._direct = False  # file:// storage (or an older control plane): stream via /files
        return None

    def _direct_plan(self, path: str, size: int) -> DirectWriteAnswer | None:
        got = self._direct_call(DirectWriteAnswer, "/direct/write",
                                {"path": path, "size": size})
        if got is not None and got.urls:
            return got
        self._direct = False
        return None

    def _direct_call(self, answer: type[T], route: str, body: dict[str, Any]) -> T | None:
        def attempt() -> T | None:
            resp = self._http.post(route, json=body)
            if resp.status_code in (404, 405) and "error" not in resp.text[:200]:
                return None  # a control plane that predates the direct path
            self._check(resp)
            return _parse(answer, resp.json(), f"POST {route}")

        got = self._retrying(f"POST {route}", attempt)
        if got is not None:
            self._direct = True
        return got

    def _put_direct(self, path: str, src: Path, size: int, plan: DirectWriteAnswer,
                    progress: Callable[[int], object]) -> SizeAnswer:
        """Send ``src`` to its presigned part URLs, several parts at once; then completion.

        The file is read once, in order: each part is hashed as it is read and then
        sent by a worker while the next is read, so at most ``PARTS_IN_FLIGHT`` + 1
        parts are in memory.
        """
        digest = hashlib.sha256()
        etags: list[str] = [""] * len(plan.urls)
        room = threading.BoundedSemaphore(PARTS_IN_FLIGHT + 1)

        def send(n: int, data: bytes) -> None:
            try:
                etags[n] = self._retrying(f"PUT part {n + 1} of {path}",
                                          lambda: self._put_part(plan.urls[n], data, path))
                progress(len(data))
            finally:
                room.release()

        with open(src, "rb") as f, ThreadPoolExecutor(PARTS_IN_FLIGHT,
                                                      thread_name_prefix="part") as pool:
            sent = []
            for n in range(len(plan.urls)):
                room.acquire()
                data = f.read(plan.part_size)
                digest.update(data)
                sent.append(pool.submit(send, n, data))
            for fut in sent:
                fut.result()
            if f.read(1):
                raise StorageError(f"{src} grew while it was being sent: not saved")
        if not plan.upload_id:
            etags = []
        answer: SizeAnswer = self._call(SizeAnswer, "POST", "/direct/done", json={
            "path": path, "upload_id": plan.upload_id, "etags": etags, "size": size,
            "sha256": digest.hexdigest()},
            timeout=httpx.Timeout(self._http.timeout.connect, read=COMMIT_TIMEOUT_S))
        return answer

    def _put_part(self, url: str, data: bytes, path: str) -> str:
        resp = self._storage.put(url, content=data)
        self._check_storage(resp, f"PUT {path}")
        return resp.headers.get("ETag", "")

    @staticmethod
    def _check_storage(resp: httpx.Response, what: str) -> None:
        if resp.status_code < 400:
            return
        resp.read()
        if resp.status_code >= 500:
            raise _Retry(f"storage answered HTTP {resp.status_code} to {what}")
        # 403: the URL expired or was refused; the caller asks for a fresh one
        raise StorageError(f"storage answered HTTP {resp.status_code} to {what}: "
                           f"{resp.text[:300]}")

    # -- launches (node 0 runs commands on node k; PROTOCOL.md) -------------------

    def secret(self, name: str) -> str:
        """A secret the job's owner put for its agents (``skyport.relay``); 404 until then."""
        return self._call(SecretAnswer, "GET", f"/secrets/{name}").value

    def node_names(self) -> list[str]:
        return self._call(NodeNames, "GET", "/nodes").node_names

    def launch_create(self, node: int, argv: list[str], cwd: str, op: str = "run") -> str:
        body: dict[str, Any] = {"node": node, "argv": argv, "cwd": cwd}
        if op != "run":  # an older control plane knows no ops: a plain launch says none
            body["op"] = op
        return self._call(LaunchCreated, "POST", "/launches", json=body).launch_id

    def launch_poll(self, rank: int, wait_s: float) -> LaunchPoll:
        return self._call(LaunchPoll, "POST", f"/nodes/{rank}/launches",
                          params={"wait_s": wait_s}, timeout=wait_s + 30)

    def launch_output(self, launch_id: str, rank: int, stream: str, offset: int,
                      data: bytes) -> SizeAnswer:
        return self._call(SizeAnswer, "POST", f"/launches/{launch_id}/output/{stream}",
                          params={"node": rank, "offset": offset}, content=data)

    def launch_exit(self, launch_id: str, rank: int, exit_code: int) -> Empty:
        return self._call(Empty, "POST", f"/launches/{launch_id}/exit",
                          json={"node": rank, "exit_code": exit_code})

    def launch_read(self, launch_id: str, offsets: dict[str, int],
                    wait_s: float) -> LaunchRead:
        return self._call(LaunchRead, "GET", f"/launches/{launch_id}",
                          params={**offsets, "wait_s": wait_s}, timeout=wait_s + 30)

    def launch_cancel(self, launch_id: str) -> Empty:
        return self._call(Empty, "POST", f"/launches/{launch_id}/cancel")

    # -- checkpoints (skyport.agent.checkpointer; PROTOCOL.md) ---------------------

    def checkpoint_request(self, reason: str = "") -> CheckpointOrder:
        return self._call(CheckpointOrder, "POST", "/checkpoints", json={"reason": reason})

    def checkpoint_part(self, version: int, ck_id: str, rank: int,
                        files: list[dict[str, Any]]) -> PartAnswer:
        return self._call(PartAnswer, "POST", f"/checkpoints/{version}/parts/{rank}",
                          json={"id": ck_id, "files": files})

    def checkpoint_latest(self) -> LatestAnswer:
        return self._call(LatestAnswer, "GET", "/checkpoints")

    # -- plumbing -----------------------------------------------------------------

    def _call(self, answer: type[T] | Any, method: str, path: str, **kwargs: Any) -> T:
        """One JSON call, its answer parsed into ``answer`` (a ``skyport.protocol`` type)."""

        def attempt() -> T:
            resp = self._http.request(method, path, **kwargs)
            self._check(resp)
            return _parse(answer, resp.json(), f"{method} {path}")

        return self._retrying(f"{method} {path}", attempt)

    @staticmethod
    def _check(resp: httpx.Response, read: bool = False) -> None:
        if resp.status_code < 400:
            return
        if read:
            resp.read()
        if resp.status_code in _RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            try:
                parsed = ErrorBody.model_validate(payload)
            except PydanticValidationError:
                pass  # not the API's error body: reported by status below
            else:
                raise error_from_dict(parsed.model_dump(exclude_unset=True))
        raise SkyportError(f"HTTP {resp.status_code} from the control plane: {resp.text[:200]}")

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        deadline = self._clock() + self.retry_for_s
        delay = self.backoff_s
        while True:
            try:
                return attempt()
            except (httpx.TransportError, _Retry) as exc:
                if self._clock() + delay > deadline:
                    raise ControlPlaneError(
                        f"{what}: control plane at {self.base_url} unreachable for "
                        f"{self.retry_for_s:.0f}s ({type(exc).__name__}: {exc})") from exc
                log.warning("%s failed (%s: %s); retrying in %.1fs", what,
                            type(exc).__name__, exc, delay)
                self._sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)


def _parse(answer: type[T] | Any, data: Any, what: str) -> T:
    try:
        parsed: T = TypeAdapter(answer).validate_python(data)
        return parsed
    except PydanticValidationError as exc:
        raise ControlPlaneError(f"{what}: the control plane's answer does not fit "
                                f"{getattr(answer, '__name__', answer)}: {exc}") from exc
