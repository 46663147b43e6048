"""The ends of a relayed stream: open a leg, pipe a TCP connection through it, hold a channel.

Shared by the agent (``skyport.relay.node``) and the user's forwarder
(``skyport.relay.forwarder``): both only dial out, over ``websockets``' asyncio
client, with the control plane's CA and (forwarder) the user's certificate or
(agent) the job's bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from skyport.errors import ControlPlaneError, SkyportError, error_from_dict
from skyport.protocol import RelayOrder, RelayReady

__all__ = ["CHUNK", "EOF", "hold_channel", "open_leg", "pipe", "ws_url"]

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
_Job = Coroutine[Any, Any, None]
EOF = "eof"  # the text frame for a half-close; data always goes in binary frames


def ws_url(http_url: str, path: str) -> str:
    """``https://host:port`` + ``/v1/...`` -> ``wss://host:port/v1/...``."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    return base + path


async def open_leg(url: str, *, ssl_context: ssl.SSLContext | None,
                   headers: dict[str, str] | None = None,
                   open_timeout_s: float = 30.0) -> ClientConnection:
    """Open one relay socket and read its ``RelayReady``; a refusal raises its error."""
    try:
        ws = await connect(url, ssl=ssl_context, additional_headers=headers or {},
                           compression=None, max_size=4 * CHUNK, open_timeout=open_timeout_s,
                           ping_interval=20, ping_timeout=60, close_timeout=5)
    except InvalidStatus as exc:
        raise ControlPlaneError(
            f"the relay at {url.split('?')[0]} answered HTTP "
            f"{exc.response.status_code} (is the control plane new enough?)") from exc
    except (OSError, WebSocketException, TimeoutError) as exc:
        raise ControlPlaneError(f"cannot reach the relay at {url.split('?')[0]}: "
                                f"{type(exc).__name__}: {exc}") from exc
    try:
        first = await asyncio.wait_for(ws.recv(), open_timeout_s)
        ready = RelayReady.model_validate_json(first)
    except (ConnectionClosed, TimeoutError, ValueError) as exc:
        await ws.close()
        raise ControlPlaneError(f"the relay at {url.split('?')[0]} closed without an "
                                f"answer: {exc}") from exc
    if not ready.ok:
        await ws.close()
        raise error_from_dict({"error": ready.error, "message": ready.message})
    return ws


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               ws: ClientConnection) -> None:
    """Carry one TCP connection over a relay leg until both directions are done."""

    async def up() -> None:
        while data := await reader.read(CHUNK):
            await ws.send(data)
        await ws.send(EOF)

    async def down() -> None:
        async for message in ws:
            if isinstance(message, str):
                if message == EOF and writer.can_write_eof():
                    writer.write_eof()
                continue
            writer.write(message)
            await writer.drain()

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        # both halves normally; either failing (reset, closed socket) ends the stream
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() is not None for t in done) or tasks[1] in done:
                break
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        with contextlib.suppress(Exception):
            await ws.close()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def hold_channel(url: str, *, ssl_context: ssl.SSLContext | None,
                       headers: dict[str, str] | None,
                       on_order: Callable[[RelayOrder, ClientConnection], _Job],
                       stop: asyncio.Event, what: str,
                       give_up: Callable[[SkyportError], bool] = lambda exc: False,
                       max_backoff_s: float = 10.0) -> None:
    """Keep a control channel open (dialling again after a cut) until ``stop`` is set.

    Each order runs ``on_order`` in a task of its own.  ``give_up(error)`` says
    whether a refusal is final (the job is over): then this returns.
    """
    backoff = 0.2
    tasks: set[asyncio.Task[None]] = set()
    try:
        while not stop.is_set():
            try:
                ws = await open_leg(url, ssl_context=ssl_context, headers=headers)
            except SkyportError as exc:
                if give_up(exc):
                    log.info("%s: %s; giving up", what, exc)
                    return
                log.warning("%s: %s; trying again in %.1f s", what, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(max_backoff_s, backoff * 2)
                continue
            backoff = 0.2
            log.info("%s: connected", what)
            stopper = asyncio.create_task(stop.wait())
            recv: asyncio.Task[Any] | None = None
            try:
                while True:
                    recv = asyncio.create_task(ws.recv())
                    done, _ = await asyncio.wait({recv, stopper},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        recv.cancel()
                        break
                    text = recv.result()
                    if not isinstance(text, str):
                        continue
                    order = RelayOrder.model_validate_json(text)
                    task: asyncio.Task[None] = asyncio.create_task(on_order(order, ws))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except (ConnectionClosed, ValueError) as exc:
                log.warning("%s: the channel closed (%s); dialling again", what, exc)
            finally:
                stopper.cancel()
                if recv is not None:
                    recv.cancel()
                with contextlib.suppress(Exception):
                    await ws.close()
    finally:
        # the stream tasks end with the channel, before the loop does
        pending = list(tasks)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
