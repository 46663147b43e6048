"""``Forwarder``: the user's end of the relay (``skyport forward``), on the user's host.

It only dials out, with the user's certificate: each connection accepted on
``127.0.0.1:LOCAL`` becomes a stream to ``127.0.0.1:PORT`` on node K of the job;
each ``reverse`` name holds a listener channel whose streams (a server on the
node calling home) are carried to a local target.  It ends when the job is
over, or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection

from skyport.errors import ConflictError, NotFoundError, SkyportError
from skyport.protocol import RelayFailure, RelayOrder
from skyport.relay.legs import hold_channel, open_leg, pipe, ws_url

__all__ = ["Forwarder", "Target"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Target:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]"), int(port))


@dataclass
class Forwarder:
    url: str  # the control plane, https://host:port
    ssl_context: ssl.SSLContext | None
    job_id: str
    port: int | None = None  # on the node; None: reverse streams only
    node: int = 0
    local_host: str = "127.0.0.1"
    local_port: int = 0
    reverse: dict[str, Target] = field(default_factory=dict)
    # None: the job goes on; else why it is over (polled; the forwarder then ends)
    job_over: Callable[[], Awaitable[str | None]] | None = None
    poll_s: float = 2.0
    streams: int = 0
    _server: asyncio.Server | None = None
    _open: set[asyncio.Task[None]] = field(default_factory=set)  # streams being carried
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base(self) -> str:
        return ws_url(self.url, f"/v1/jobs/{self.job_id}")

    async def start(self) -> int:
        """Listen locally; the port (``local_port=0`` picks one)."""
        if self.port is not None:
            self._server = await asyncio.start_server(self._accepted, self.local_host,
                                                      self.local_port)
            self.local_port = self._server.sockets[0].getsockname()[1]
        return self.local_port

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> str:
        """Serve until the job is over or ``stop()``; why it ended."""
        tasks = [asyncio.create_task(self._reverse(name, target))
                 for name, target in self.reverse.items()]
        why = "stopped"
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.poll_s)
                if self.job_over is not None and not self._stop.is_set():
                    over = await self.job_over()
                    if over is not None:
                        why = over
                        break
        finally:
            self._stop.set()
            if self._server is not None:
                self._server.close()
            tasks += list(self._open)  # the forward is closed: so are its streams
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return why

    async def _accepted(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._open.add(task)
            task.add_done_callback(self._open.discard)
        try:
            ws = await open_leg(f"{self.base}/relay/connect?node={self.node}&port={self.port}",
                                ssl_context=self.ssl_context)
        except SkyportError as exc:
            log.warning("stream to node %d port %s: %s", self.node, self.port, exc)
            writer.close()
            return
        self.streams += 1
        with contextlib.suppress(asyncio.CancelledError):  # the forward is closing: quietly
            await pipe(reader, writer, ws)

    async def _reverse(self, name: str, target: Target) -> None:
        async def join(order: RelayOrder, channel: ClientConnection) -> None:
            try:
                reader, writer = await asyncio.open_connection(target.host, target.port)
            except OSError as exc:
                with contextlib.suppress(Exception):
                    await channel.send(RelayFailure(
                        stream=order.stream,
                        error=f"{target.host}:{target.port}: {exc.strerror or exc}",
                    ).model_dump_json())
                return
            try:
                ws = await open_leg(ws_url(self.url, f"/v1/relay/streams/{order.stream}"),
                                    ssl_context=self.ssl_context)
            except SkyportError as exc:
                log.warning("reverse stream %s: %s", name, exc)
                writer.close()
                return
            self.streams += 1
            with contextlib.suppress(asyncio.CancelledError):
                await pipe(reader, writer, ws)

        await hold_channel(f"{self.base}/relay/listen/{name}", ssl_context=self.ssl_context,
                           headers=None, on_order=join, stop=self._stop,
                           what=f"reverse channel {name!r} of job {self.job_id}",
                           give_up=lambda exc: isinstance(exc, NotFoundError | ConflictError))


def run_forwarder(fwd: Forwarder, ready_file: Path | None = None) -> str:
    """Run ``fwd`` in this process until the job ends or a signal; why it ended.

    ``ready_file`` gets ``{"pid", "local_port", "job_id"}`` once it listens
    (written atomically), and is removed at the end.
    """

    async def main() -> str:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fwd.stop)
        port = await fwd.start()
        if ready_file is not None:
            tmp = ready_file.with_name(f".{ready_file.name}.tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "local_port": port,
                                       "job_id": fwd.job_id}))
            os.replace(tmp, ready_file)
        return await fwd.run()

    try:
        return asyncio.run(main())
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
