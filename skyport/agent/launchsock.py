"""``LaunchSocket``: the agent's Unix socket where the rsh relay asks for launches.

Every node's agent listens on ``<runtime dir>/launch.sock`` (a 0700
directory of its own; the path reaches the payload as
``SKYPORT_LAUNCH_SOCKET``).  A relay (``skyport.launch.rsh``) connects, sends
``{"host", "argv", "cwd"}``; the agent maps the host name to a node rank,
creates the launch through the REST API with the job token (which the relay
never sees; a working directory inside the node's travels relative to it, so
node k runs it in its own), and streams the output and exit code back as JSON lines.  If the
relay goes away first, the launch is cancelled and node k kills it.

Only processes of the agent's own user, or of its payload's user when the
payload runs as a user of its own (``skyport.agent.isolation``), may connect
(``SO_PEERCRED``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyport.agent.client import AgentClient
from skyport.agent.nodes import launch_cwd
from skyport.errors import SkyportError

__all__ = ["LaunchSocket"]

log = logging.getLogger(__name__)


class LaunchSocket:
    def __init__(self, client: AgentClient, path: Path,
                 node_names: Callable[[], list[str]], read_wait_s: float = 10.0,
                 allow_peer: Callable[[int], bool] | None = None,
                 workdir: Path | None = None) -> None:
        self.client = client
        self.workdir = workdir  # a cwd inside it travels relative (skyport.agent.nodes)
        self.path = path
        self.node_names = node_names
        self.read_wait_s = read_wait_s
        self.served = 0
        # the agent's own user, and the payload's user when it has one of its own
        self.allow_peer = allow_peer or (lambda uid: uid == os.getuid())
        # other request types ({"type": name, ...}) -> handler returning one answer frame
        self.requests: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._sock: socket.socket | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(64)
        self._sock = sock
        threading.Thread(target=self._accept_loop, name="launch-socket", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="launch-relay",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if not self.allow_peer(uid):
                log.warning("launch socket: refused a connection from uid %d", uid)
                return
            try:
                request = json.loads(conn.makefile("rb").readline())
                if isinstance(request, dict) and request.get("type") in self.requests:
                    self._send(conn, self.requests[str(request["type"])](request))
                    return
                host, argv, cwd = str(request["host"]), list(request["argv"]), \
                    str(request.get("cwd", ""))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                self._send(conn, {"error": f"bad request: {exc}"})
                return
            try:
                self._relay(conn, host, argv, cwd)
            except (SkyportError, OSError) as exc:
                log.warning("launch on %s failed: %s", host, exc)
                with contextlib.suppress(OSError):
                    self._send(conn, {"error": str(exc)})

    def _relay(self, conn: socket.socket, host: str, argv: list[str], cwd: str) -> None:
        names = self.node_names()
        if host not in names:
            self._send(conn, {"error": f"unknown host {host!r}: this job's nodes are "
                              + ", ".join(names)})
            return
        node = names.index(host)
        if self.workdir is not None:
            cwd = launch_cwd(cwd, self.workdir)
        launch_id = self.client.launch_create(node, argv, cwd)
        self.served += 1
        log.info("launch %s on node %d (%s): %s", launch_id, node, host, argv[-1][:200])
        gone = threading.Event()

        def watch() -> None:  # the relay closing its end cancels the launch
            with contextlib.suppress(OSError):
                while conn.recv(4096):
                    pass
            gone.set()

        threading.Thread(target=watch, name="launch-watch", daemon=True).start()
        offsets = {"stdout": 0, "stderr": 0}
        try:
            while not gone.is_set() and not self._closed.is_set():
                got = self.client.launch_read(launch_id, offsets, self.read_wait_s)
                for s, data, base in (("stdout", got.stdout, got.stdout_offset),
                                      ("stderr", got.stderr, got.stderr_offset)):
                    if data:
                        self._send(conn, {"stream": s, "data": data})
                    offsets[s] = base + len(base64.b64decode(data))
                if got.exit_code is not None:
                    self._send(conn, {"exit": got.exit_code})
                    log.info("launch %s ended with %s", launch_id, got.exit_code)
                    return
        except (SkyportError, OSError):
            gone.set()
            raise
        finally:
            if gone.is_set() or self._closed.is_set():
                log.info("launch %s: the relay went away; cancelling", launch_id)
                with contextlib.suppress(SkyportError):
                    self.client.launch_cancel(launch_id)

    @staticmethod
    def _send(conn: socket.socket, frame: dict[str, object]) -> None:
        conn.sendall(json.dumps(frame).encode() + b"\n")
