"""``RelayHub``: the control plane's side of the relay; it joins two WebSockets into a stream.

A stream has two legs.  The first opens it (a user's ``connect``, an agent's
``dial``); the hub orders the other end, over that end's control channel, to
open the second leg (``join``) naming the stream, then copies frames both ways
until either leg closes.  The routes (``skyport.api.routes.relay``) check who
is calling before anything reaches the hub; the hub checks that a second leg
belongs to the job and side the stream was opened for.

Everything lives in this process's memory: after a control-plane restart the
agents and forwarders dial their control channels again and new streams work;
streams that were open are cut (their TCP connections see a reset, as after any
network hiccup).  The per-job secrets are ``skyport.relay.secrets.JobSecrets``
(``self.secrets``): kept in the state directory, so that they survive a restart,
and removed when their job ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Literal

from starlette.websockets import WebSocket, WebSocketDisconnect

from skyport.errors import ConflictError, NotFoundError, SkyportError
from skyport.protocol import RelayFailure, RelayOrder, RelayReady
from skyport.relay.secrets import JobSecrets

__all__ = ["MAX_STREAMS_PER_JOB", "RelayHub", "accept", "refuse"]

log = logging.getLogger(__name__)

MAX_STREAMS_PER_JOB = 512
Side = Literal["agent", "user"]


@dataclass
class _Channel:
    ws: WebSocket
    job_id: str

    async def order(self, order: RelayOrder) -> None:
        await self.ws.send_text(order.model_dump_json())


@dataclass
class _Pending:
    job_id: str
    side: Side  # who must open the second leg
    future: asyncio.Future[WebSocket]
    done: asyncio.Event = field(default_factory=asyncio.Event)


async def refuse(ws: WebSocket, exc: SkyportError) -> None:
    """Answer a relay socket with the error (one text frame), then close it."""
    with contextlib.suppress(Exception):
        await accept(ws)
        await ws.send_text(RelayReady(ok=False, status=exc.http_status,
                                      error=type(exc).__name__,
                                      message=exc.message).model_dump_json())
        await ws.close(code=4000 + exc.http_status)


async def accept(ws: WebSocket) -> None:
    """Accept a relay socket first, so that every refusal can say why in a frame."""
    if ws.client_state.name == "CONNECTING":
        await ws.accept()


async def _ready(ws: WebSocket) -> None:
    await ws.send_text(RelayReady(ok=True).model_dump_json())


class RelayHub:
    def __init__(self, join_timeout_s: float = 30.0,
                 secrets: JobSecrets | None = None) -> None:
        self.join_timeout_s = join_timeout_s
        self._nodes: dict[tuple[str, int], _Channel] = {}
        self._listeners: dict[tuple[str, str], _Channel] = {}
        self._pending: dict[str, _Pending] = {}
        self._streams: dict[str, int] = {}  # job -> streams open or opening
        self.secrets = secrets if secrets is not None else JobSecrets()
        self.joined = 0  # streams joined since start (for tests and the log)

    # -- control channels ---------------------------------------------------------

    async def serve_node(self, ws: WebSocket, job_id: str, rank: int) -> None:
        """An agent's control channel: orders go down, dial failures come up."""
        await self._serve_channel(ws, job_id, self._nodes, (job_id, rank))

    async def serve_listener(self, ws: WebSocket, job_id: str, name: str) -> None:
        """A forwarder's listener channel for reverse streams named ``name``."""
        await self._serve_channel(ws, job_id, self._listeners, (job_id, name))

    async def _serve_channel(self, ws: WebSocket, job_id: str, table: dict, key: tuple) -> None:
        channel = _Channel(ws, job_id)
        old = table.get(key)
        table[key] = channel  # the newest wins: a restarted agent or forwarder takes over
        if old is not None:
            with contextlib.suppress(Exception):
                await old.ws.close(code=4409)
        await _ready(ws)
        try:
            while True:
                text = await ws.receive_text()
                try:
                    failure = RelayFailure.model_validate_json(text)
                except ValueError:
                    log.warning("relay channel %s: an unreadable frame, ignored", key)
                    continue
                pending = self._pending.get(failure.stream)
                if pending is not None and pending.job_id == job_id \
                        and not pending.future.done():
                    pending.future.set_exception(ConflictError(
                        f"the relay's far end could not connect: {failure.error}"))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if table.get(key) is channel:
                del table[key]

    def has_node(self, job_id: str, rank: int) -> bool:
        return (job_id, rank) in self._nodes

    # -- streams ------------------------------------------------------------------

    async def connect(self, ws: WebSocket, job_id: str, node: int, port: int) -> None:
        """A user's stream to ``127.0.0.1:port`` on node ``node`` of the job."""
        channel = self._nodes.get((job_id, node))
        if channel is None:
            await refuse(ws, ConflictError(
                f"node {node} of job {job_id} has no relay channel (the job is not running "
                "there, or its agent has not connected yet)"))
            return
        await self._open(ws, job_id, channel, "agent", port)

    async def dial(self, ws: WebSocket, job_id: str, name: str) -> None:
        """An agent's reverse stream to the forwarder listening as ``name`` for the job."""
        channel = self._listeners.get((job_id, name))
        if channel is None:
            await refuse(ws, NotFoundError(
                f"no forwarder listens as {name!r} for job {job_id}"))
            return
        await self._open(ws, job_id, channel, "user", None)

    async def _open(self, ws: WebSocket, job_id: str, channel: _Channel, side: Side,
                    port: int | None) -> None:
        if self._streams.get(job_id, 0) >= MAX_STREAMS_PER_JOB:
            await refuse(ws, ConflictError(
                f"job {job_id} has {MAX_STREAMS_PER_JOB} relayed streams open (the most)"))
            return
        sid = secrets.token_urlsafe(18)
        pending = _Pending(job_id, side, asyncio.get_running_loop().create_future())
        self._pending[sid] = pending
        self._streams[job_id] = self._streams.get(job_id, 0) + 1
        try:
            try:
                await channel.order(RelayOrder(stream=sid, port=port))
                other = await asyncio.wait_for(pending.future, self.join_timeout_s)
            except SkyportError as exc:
                await refuse(ws, exc)
                return
            except (TimeoutError, WebSocketDisconnect, RuntimeError) as exc:
                await refuse(ws, ConflictError(
                    f"the relay's far end did not join the stream ({type(exc).__name__})"))
                return
            self.joined += 1
            await _ready(ws)
            await _ready(other)
            await _splice(ws, other)
        finally:
            self._pending.pop(sid, None)
            left = self._streams.get(job_id, 1) - 1
            if left > 0:
                self._streams[job_id] = left
            else:
                self._streams.pop(job_id, None)
            pending.done.set()

    def stream_job(self, sid: str) -> str | None:
        """The job a stream waiting for its second leg belongs to (None: no such stream)."""
        pending = self._pending.get(sid)
        return pending.job_id if pending is not None and not pending.future.done() else None

    async def join(self, ws: WebSocket, sid: str, job_id: str, side: Side) -> None:
        """The second leg of stream ``sid``, from ``side`` of job ``job_id`` (already checked)."""
        pending = self._pending.get(sid)
        if pending is None or pending.job_id != job_id or pending.side != side \
                or pending.future.done():
            await refuse(ws, NotFoundError(f"no stream {sid[:8]}... waits for this side"))
            return
        pending.future.set_result(ws)
        await pending.done.wait()  # the first leg's task splices; this one holds the socket


async def _splice(a: WebSocket, b: WebSocket) -> None:
    """Copy frames both ways until either leg closes, then close both."""

    async def pump(src: WebSocket, dst: WebSocket) -> None:
        while True:
            message = await src.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await dst.send_bytes(message["bytes"])
            elif message.get("text") is not None:
                await dst.send_text(message["text"])

    tasks = [asyncio.create_task(pump(a, b)), asyncio.create_task(pump(b, a))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for ws in (a, b):
            with contextlib.suppress(Exception):
                await ws.close()
