"""``NodeRelay``: the agent's end of the relay, in a thread with an event loop of its own.

It holds the node's control channel; for each order it dials ``127.0.0.1:PORT``
on this node and opens the stream's second leg (a refused dial is reported, so
the user's side fails at once with the reason).  ``listen(name)`` opens a local
port on 127.0.0.1 whose connections become reverse streams to the forwarder
listening as ``name``: the payload asks for one through the launch socket
(``python -m skyport.relay.payload listen NAME``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from concurrent.futures import Future

from websockets.asyncio.client import ClientConnection

from skyport.errors import NotFoundError, PermissionDeniedError, SkyportError
from skyport.protocol import RelayFailure, RelayOrder
from skyport.relay.legs import hold_channel, open_leg, pipe, ws_url

__all__ = ["NodeRelay"]

log = logging.getLogger(__name__)


class NodeRelay:
    def __init__(self, control_url: str, job_id: str, token: str, rank: int,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.base = ws_url(control_url, f"/agent/v1/jobs/{job_id}")
        self.rank = rank
        self.ssl_context = ssl_context
        self._headers = {"Authorization": f"Bearer {token}"}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay",
                                        daemon=True)
        self._stop: asyncio.Event | None = None
        self._servers: dict[str, asyncio.Server] = {}
        self.streams = 0  # streams carried (both directions)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            if self._stop is not None:
                self._stop.set()
            for server in self._servers.values():
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def listen(self, name: str, timeout_s: float = 30.0) -> int:
        """A port on 127.0.0.1 whose connections reach the forwarder listening as ``name``."""
        fut: Future[int] = asyncio.run_coroutine_threadsafe(self._listen(name), self._loop)
        return fut.result(timeout_s)

    # -- in the loop ----------------------------------------------------------------

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        await hold_channel(
            f"{self.base}/relay/nodes/{self.rank}", ssl_context=self.ssl_context,
            headers=self._headers, on_order=self._join, stop=self._stop,
            what=f"relay channel of node {self.rank}",
            # the job is over (token revoked) or unknown: the agent stops anyway
            give_up=lambda exc: isinstance(exc, PermissionDeniedError | NotFoundError))

    async def _join(self, order: RelayOrder, channel: ClientConnection) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", order.port)
        except OSError as exc:
            failure = RelayFailure(stream=order.stream,
                                   error=f"127.0.0.1:{order.port} on node {self.rank}: "
                                         f"{exc.strerror or exc}")
            with contextlib.suppress(Exception):
                await channel.send(failure.model_dump_json())
            return
        try:
            ws = await open_leg(f"{self.base}/relay/streams/{order.stream}",
                                ssl_context=self.ssl_context, headers=self._headers)
        except SkyportError as exc:
            log.warning("relay stream to port %s: %s", order.port, exc)
            writer.close()
            return
        self.streams += 1
        with contextlib.suppress(asyncio.CancelledError):  # the relay is stopping: quietly
            await pipe(reader, writer, ws)

    async def _listen(self, name: str) -> int:
        server = self._servers.get(name)
        if server is None:
            async def accepted(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
                try:
                    ws = await open_leg(f"{self.base}/relay/dial/{name}",
                                        ssl_context=self.ssl_context, headers=self._headers)
                except SkyportError as exc:
                    log.warning("reverse stream %s: %s", name, exc)
                    writer.close()
                    return
                self.streams += 1
                with contextlib.suppress(asyncio.CancelledError):  # the relay is stopping
                    await pipe(reader, writer, ws)

            server = await asyncio.start_server(accepted, "127.0.0.1", 0)
            self._servers[name] = server
        port: int = server.sockets[0].getsockname()[1]
        return port
