"""``Checkpointer``: one node agent's part of checkpoints (``skyport.checkpoint``).

On start it restores this node's part of the job's latest complete checkpoint
into the checkpoint directories (before any payload or launched rank starts)
and adds the payload variables::

    SKYPORT_CHECKPOINT_DIR       node 0 only: <workdir>/skyport-checkpoint
    SKYPORT_NODE_CHECKPOINT_DIR  every node:  <workdir>/skyport-node-checkpoint
    SKYPORT_RESTART_COUNT        restarts before this attempt (0 on the first)

Then it follows the heartbeat answers: ``checkpoint: {version, id}`` makes it
copy its directories to a private staging copy (fast, local) and upload that
copy under ``checkpoints/v<N>/shared/`` (node 0's checkpoint dir) and
``checkpoints/v<N>/nodes/<rank>/`` (the node dir), then report its part; the
Core writes ``latest.json`` once every node has.  ``signal: NAME`` (the job's
``--signal``) is sent to every process group the agent started.  Uploads run
in this object's thread, never in the heartbeat thread.

It also answers ``{"type": "checkpoint"}`` on the agent's launch socket, for
``skyport checkpoint`` and ``skyport.checkpoint.request`` inside the job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from skyport.agent.client import AgentClient
from skyport.agent.procfs import members
from skyport.errors import ConflictError, SkyportError
from skyport.models import check_relative_path
from skyport.protocol import CheckpointOrder, HeartbeatAnswer

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)

SHARED_DIR = "skyport-checkpoint"
NODE_DIR = "skyport-node-checkpoint"
REQUEST_SIGNAL = signal.SIGUSR2


class Checkpointer:
    def __init__(self, client: AgentClient, workdir: Path, rank: int,
                 restart_count: int = 0, poll_s: float = 0.5) -> None:
        self.client = client
        self.workdir = workdir
        self.rank = rank
        self.restart_count = restart_count
        self.poll_s = poll_s
        self.shared_dir = workdir / SHARED_DIR
        self.node_dir = workdir / NODE_DIR
        self.uploaded = 0  # versions this node uploaded its part of
        self._wanted: CheckpointOrder | None = None
        self._done_ids: set[str] = set()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._asked = threading.Event()  # SIGUSR2 to the agent
        self._thread: threading.Thread | None = None

    # -- start: restore, environment ----------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        # no SKYPORT_AGENT_PID: the payload asks over the launch socket, and the
        # agent's pid is no business of a payload that may run as another user
        env = {"SKYPORT_NODE_CHECKPOINT_DIR": str(self.node_dir),
               "SKYPORT_RESTART_COUNT": str(self.restart_count)}
        if self.rank == 0:
            env["SKYPORT_CHECKPOINT_DIR"] = str(self.shared_dir)
        return env

    def restore(self) -> int:
        """Put this node's part of the latest complete checkpoint in place; files restored."""
        self.node_dir.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self.shared_dir.mkdir(parents=True, exist_ok=True)
        got = self.client.checkpoint_latest()
        if self.rank == 0:
            self.client.log_base = dict(got.log_sizes)
        latest = got.latest
        if latest is None:
            return 0
        version = latest.version
        mine = {f"v{version}/nodes/{self.rank}/": self.node_dir}
        if self.rank == 0:
            mine[f"v{version}/shared/"] = self.shared_dir
        count = 0
        for entry in latest.files:
            path = entry.path
            for prefix, dest_dir in mine.items():
                if not path.startswith(prefix):
                    continue
                rel = check_relative_path(path[len(prefix):], "checkpoint file")
                dest = dest_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.client.download(f"checkpoints/{path}", dest)
                count += 1
        log.info("restored checkpoint v%d (%d files of this node)", version, count)
        return count

    @classmethod
    def restored(cls, client: AgentClient, workdir: Path, rank: int,
                 restart_count: int) -> Checkpointer:
        """A checkpointer whose node already holds its part of the latest checkpoint."""
        ck = cls(client, workdir, rank, restart_count)
        ck.restore()
        return ck

    def attach(self, env: dict[str, str], sock: Any,
               beat_listeners: list[Any]) -> None:
        """Wire into the agent: payload variables, socket requests, heartbeat answers."""
        env.update(self.env)
        sock.requests["checkpoint"] = self.handle_request
        beat_listeners.append(self.on_beat)
        self.start()

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(REQUEST_SIGNAL, self._on_request_signal)
        self._thread = threading.Thread(target=self._loop, name="checkpointer", daemon=True)
        self._thread.start()

    def _on_request_signal(self, _signum: int, _frame: object) -> None:
        self._asked.set()
        self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- heartbeat answers ----------------------------------------------------------

    def on_beat(self, answer: HeartbeatAnswer) -> None:
        """Called from the heartbeat thread: note the work, never do it here."""
        wanted = answer.checkpoint
        if wanted is not None and wanted.id not in self._done_ids:
            self._wanted = wanted
            self._wake.set()
        if answer.notice == "preempt":
            log.info("preemption notice: the control plane takes a last checkpoint")
        if answer.signal is not None:
            self.signal_payload(answer.signal)

    def signal_payload(self, name: str) -> int:
        """Send signal ``name`` to every process group this agent started; how many."""
        try:
            sig = signal.Signals[name]
        except KeyError:
            log.warning("unknown signal %r asked for", name)
            return 0
        me = os.getpid()
        groups = {p.pgrp for p in members(sessions={os.getsid(0)})
                  if p.ppid == me and p.pgrp == p.pid}
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        log.info("sent %s to process group(s) %s (--signal)", sig.name, sorted(groups))
        return len(groups)

    # -- uploads ----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.poll_s * 4)
            self._wake.clear()
            if self._closed.is_set():
                return
            if self._asked.is_set():
                self._asked.clear()
                with contextlib.suppress(SkyportError):
                    self.client.checkpoint_request("the job sent SIGUSR2 to its agent")
            wanted = self._wanted
            if wanted is None or wanted.id in self._done_ids:
                continue
            try:
                self.upload(wanted.version, wanted.id)
            except ConflictError as exc:
                log.info("checkpoint v%s not stored: %s", wanted.version, exc)
            except (SkyportError, OSError) as exc:
                log.warning("checkpoint v%s failed on this node: %s", wanted.version, exc)
                continue  # tried again on the next heartbeat that still asks for it
            self._done_ids.add(wanted.id)

    def upload(self, version: int, ck_id: str) -> list[dict[str, Any]]:
        """Copy this node's directories aside, upload them as version ``version``, report."""
        # a private folder of the agent's, not the working directory (the payload's)
        staging = Path(tempfile.mkdtemp(prefix=f"sp-ckpt-{ck_id[:16]}-"))
        parts = {f"v{version}/nodes/{self.rank}": self.node_dir}
        if self.rank == 0:
            parts[f"v{version}/shared"] = self.shared_dir
        files: list[dict[str, Any]] = []
        try:
            for prefix, src in parts.items():
                copy = staging / prefix.replace("/", "_")
                if src.is_dir() and not src.is_symlink():
                    copy_regular_files(src, copy)
                for f in sorted(p for p in copy.rglob("*") if p.is_file()):
                    rel = f"{prefix}/{f.relative_to(copy).as_posix()}"
                    self.client.put_file(f"checkpoints/{rel}", f)
                    files.append({"path": rel, "size": f.stat().st_size})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        answer = self.client.checkpoint_part(version, ck_id, self.rank, files)
        self.uploaded += 1
        log.info("checkpoint v%d: this node's part stored (%d files)%s", version, len(files),
                 "; complete" if answer.committed else "")
        return files

    # -- the launch socket's {"type": "checkpoint"} ---------------------------------------

    def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint asked for by the job; with ``wait``, answered once it is complete."""
        try:
            opened = self.client.checkpoint_request(str(request.get("reason", ""))[:400])
        except SkyportError as exc:
            return {"error": str(exc)}
        version = opened.version
        if not request.get("wait", True):
            return {"version": version, "complete": False}
        deadline = time.monotonic() + min(float(request.get("timeout_s", 300)), 3600)
        while time.monotonic() < deadline and not self._closed.is_set():
            try:
                got = self.client.checkpoint_latest()
            except SkyportError as exc:
                return {"error": str(exc)}
            if got.latest is not None and got.latest.version >= version:
                return {"version": version, "complete": True}
            if got.pending is None:
                return {"error": f"checkpoint v{version} was dropped before it was complete"}
            time.sleep(self.poll_s)
        return {"error": f"checkpoint v{version} was not complete in time"}


def _unfinished(name: str) -> bool:
    return (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".skyport-part")


def copy_regular_files(src: Path, dest: Path) -> int:
    """Copy the regular files under ``src`` to ``dest``; symbolic links are never followed.

    The payload owns ``src`` and may still be running: ``os.fwalk`` and
    ``O_NOFOLLOW`` opens relative to each folder's descriptor make sure that
    no link it puts anywhere, at any moment, makes the agent read a file
    outside ``src``.  Unfinished files (``.*.tmp``, ``*.skyport-part``) are
    left out.  Returns the number of files copied.
    """
    count = 0
    for folder, _dirs, names, dirfd in os.fwalk(src, follow_symlinks=False):
        out_dir = dest / os.path.relpath(folder, src)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in names:
            if _unfinished(name):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
            except OSError:  # a link (ELOOP), or gone meanwhile
                continue
            with os.fdopen(fd, "rb") as f_in:
                if not stat.S_ISREG(os.fstat(f_in.fileno()).st_mode):
                    continue
                with open(out_dir / name, "wb") as f_out:
                    shutil.copyfileobj(f_in, f_out)
            count += 1
    return count
