"""``SkyPortSpawner``: JupyterHub single-user servers as Sky Port jobs, through no open port.

``start()`` validates the user's choice (``apply_user_options``), submits a job
whose script runs the server bound to 127.0.0.1 on node 0, puts the hub's
environment (its API token among it) as a job secret that only the job's agent
reads, and starts a forwarder (``skyport forward``) in a session of its own,
outside the hub, so that a restarted hub keeps its servers: it listens on
127.0.0.1:LOCAL here for the hub's proxy and carries the server's hub API calls
back (a reverse stream).  ``start()`` returns once the server answers through
the relay, or raises at once with the job's reason if the job fails.

``poll()`` reads the job; transient control-plane errors are tolerated for
``poll_grace_s``.  ``stop()`` cancels the job (its cluster is deleted) and ends
the forwarder.  ``progress()`` follows the job's own events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from jupyterhub.spawner import Spawner
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Dict, Float, Integer, Unicode, default

from skyport.client.core import Client, connect
from skyport.errors import ConflictError, NotFoundError, SkyportError
from skyport.jupyter.node import ENV_SECRET, HUB_RELAY, pick_node_port
from skyport.jupyter.options import form_to_options, options_form_html, server_spec
from skyport.jupyter.progress import failure_message, progress_for
from skyport.models import Job, JobState
from skyport.protocol import Empty, SecretBody

__all__ = ["SkyPortSpawner"]

_SECRET_ENV = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")
_forwarders: dict[int, subprocess.Popen[bytes]] = {}  # this hub's children, to reap them


def _runtime_dir() -> Path:
    path = Path(tempfile.gettempdir()) / f"skyport-jupyter-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _is_forwarder(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is still the forwarder of ``job_id`` (a pid may have been reused)."""
    child = _forwarders.get(pid)
    if child is not None and child.poll() is not None:  # ended (and now reaped)
        del _forwarders[pid]
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"forward" in cmdline and job_id.encode() in cmdline


class SkyPortSpawner(Spawner):
    """Spawn single-user servers as Sky Port jobs (``c.JupyterHub.spawner_class = "skyport"``)."""

    home = Unicode(None, allow_none=True, config=True,
                   help="Sky Port state directory with the hub's user certificate")
    skyport_user = Unicode("", config=True,
                           help="the Sky Port user the hub acts as (default: the home's)")
    defaults = Dict(config=True, help="user_options used when the user gives none, "
                                      "e.g. {'gate': 'local', 'time': '04:00:00'}")
    poll_grace_s = Float(120.0, config=True,
                         help="how long poll() rides out control-plane errors")
    ready_poll_s = Float(0.5, config=True, help="how often start() checks the server")
    client_factory = AnyTrait(None, allow_none=True,
                              help="a callable returning a skyport Client (tests)")

    # kept in the hub's database (get_state/load_state)
    job_id = Unicode("")
    node_port = Integer(0)
    local_port = Integer(0)
    forwarder_pid = Integer(0)

    @default("start_timeout")
    def _start_timeout_default(self) -> int:
        return 900  # a queued job may wait for its cluster

    @default("apply_user_options")
    def _apply_default(self) -> Callable[[Spawner, dict[str, Any]], None]:
        return SkyPortSpawner._check_user_options

    @default("options_form")
    def _options_form_default(self) -> Callable[[Spawner], Any]:
        return SkyPortSpawner._live_form

    # -- options ----------------------------------------------------------------------

    def _check_user_options(self, user_options: dict[str, Any]) -> None:
        """Refuse a bad choice before anything is submitted, with Sky Port's one line."""
        try:
            self._spec(user_options, 0)
        except SkyportError as exc:
            raise web.HTTPError(400, exc.message, reason=exc.message[:200]) from exc

    async def _live_form(self) -> str:
        client = self._client()
        gates = await asyncio.to_thread(client.gates)
        try:
            timetable = await asyncio.to_thread(client.timetable)
        except SkyportError:
            timetable = None
        return options_form_html(gates, timetable)

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        return form_to_options(formdata)

    def _spec(self, user_options: dict[str, Any] | None, port: int) -> Any:
        name = f"jupyter-{self.user.name}" + (f"-{self.name}" if self.name else "")
        argv = [*self.cmd, *self.get_args()] if port else ["jupyterhub-singleuser"]
        return server_spec(user_options, name=name[:64], argv=argv,
                           defaults=dict(self.defaults))

    # -- the control plane --------------------------------------------------------------

    def _client(self) -> Client:
        client: Client | None = getattr(self, "_skyport_client", None)
        if client is None:
            client = (self.client_factory() if self.client_factory is not None
                      else connect(self.home, self.skyport_user or None))
            self._skyport_client = client
        return client

    async def _job(self) -> Job:
        return await asyncio.to_thread(self._client().job, self.job_id)

    # -- state ----------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.job_id:
            state.update(job_id=self.job_id, node_port=self.node_port,
                         local_port=self.local_port, forwarder_pid=self.forwarder_pid)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.job_id = str(state.get("job_id", ""))
        self.node_port = int(state.get("node_port", 0))
        self.local_port = int(state.get("local_port", 0))
        self.forwarder_pid = int(state.get("forwarder_pid", 0))
        self._last_ok = time.monotonic()

    def clear_state(self) -> None:
        super().clear_state()
        self.job_id = ""
        self.node_port = self.local_port = self.forwarder_pid = 0

    # -- start ----------------------------------------------------------------------------

    async def start(self) -> str:
        self.node_port = pick_node_port()
        self.ip, self.port = "127.0.0.1", self.node_port  # where get_env() says it serves
        try:
            spec = self._spec(self.user_options, self.node_port)
        except SkyportError as exc:
            raise web.HTTPError(400, exc.message, reason=exc.message[:200]) from exc
        client = self._client()
        try:
            job = await asyncio.to_thread(client.submit, spec)
        except SkyportError as exc:
            raise web.HTTPError(exc.http_status if exc.http_status < 500 else 503,
                                exc.message, reason=exc.message[:200]) from exc
        self.job_id = job.id
        self._last_ok = time.monotonic()
        self.log.info("%s: Sky Port job %s", self._log_name, job.id)
        try:
            env = {k: v for k, v in self.get_env().items() if isinstance(v, str)}
            await asyncio.to_thread(
                client.call, "PUT", f"/v1/jobs/{job.id}/secrets/{ENV_SECRET}", Empty,
                body=SecretBody(value=json.dumps(env)))
            self.local_port, self.forwarder_pid = await self._start_forwarder()
            await self._wait_ready()
        except BaseException:
            await self._end(f"the server did not start (job {job.id})")
            raise
        return f"http://127.0.0.1:{self.local_port}"

    def _hub_target(self) -> str:
        parts = urlsplit(self.hub.api_url)
        host = parts.hostname or "127.0.0.1"
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{HUB_RELAY}={host}:{port}"

    def _forwarder_argv(self, ready: Path) -> list[str]:
        argv = [sys.executable, "-m", "skyport"]
        if self.home:
            argv += ["--home", self.home]
        if self.skyport_user:
            argv += ["--user", self.skyport_user]
        argv += ["forward", self.job_id, str(self.node_port), "--node", "0",
                 "--reverse", self._hub_target(), "--ready-file", str(ready)]
        if self.local_port:
            argv += ["--local-port", str(self.local_port)]
        return argv

    async def _start_forwarder(self) -> tuple[int, int]:
        """Start ``skyport forward`` in a session of its own; its (local port, pid)."""
        ready = _runtime_dir() / f"{self.job_id}.json"
        ready.unlink(missing_ok=True)
        with open(_runtime_dir() / f"{self.job_id}.log", "ab") as logf:
            proc = subprocess.Popen(self._forwarder_argv(ready), stdin=subprocess.DEVNULL,
                                    stdout=logf, stderr=logf, start_new_session=True)
        _forwarders[proc.pid] = proc
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ready.is_file():
                info = json.loads(ready.read_text())
                return int(info["local_port"]), proc.pid
            if proc.poll() is not None:
                log = (_runtime_dir() / f"{self.job_id}.log").read_text()[-500:]
                raise RuntimeError(f"the forwarder exited with {proc.returncode}: {log}")
            await asyncio.sleep(0.1)
        raise RuntimeError("the forwarder did not start within 60 s")

    async def _wait_ready(self) -> None:
        """Until the server answers through the relay; a job that ends raises its reason."""
        prefix = self.server.base_url if self.server is not None else self.user.url
        url = f"http://127.0.0.1:{self.local_port}{prefix}"
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                job = await self._job()
                if job.state.is_terminal():
                    said = ""
                    with contextlib.suppress(SkyportError):
                        said = await asyncio.to_thread(self._client().log_tail, job.id)
                    raise web.HTTPError(500, failure_message(job, said), reason="job ended")
                if job.state == JobState.RUNNING:
                    with contextlib.suppress(httpx.HTTPError):
                        answer = await http.get(url + "api")
                        if answer.status_code < 500:
                            self._ready = True
                            return
                await asyncio.sleep(self.ready_poll_s)

    # -- progress ---------------------------------------------------------------------------

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        shown = 0
        while True:
            if getattr(self, "_ready", False):
                yield {"progress": 100, "message": "ready: the server answers through "
                                                   "the relay"}
                return
            if self.job_id:
                with contextlib.suppress(SkyportError):
                    job = await self._job()
                    for event in job.events[shown:]:
                        yield progress_for(job, event)
                    shown = len(job.events)
                    if job.state.is_terminal():
                        return
            await asyncio.sleep(1.0)

    # -- poll -------------------------------------------------------------------------------

    async def poll(self) -> int | None:
        if not self.job_id:
            return 0
        try:
            job = await self._job()
        except NotFoundError:
            return 0
        except SkyportError as exc:
            last = getattr(self, "_last_ok", time.monotonic())
            if time.monotonic() - last < self.poll_grace_s:
                self.log.warning("%s: the control plane did not answer (%s); still "
                                 "assuming the server runs", self._log_name, exc)
                return None
            self.log.error("%s: no answer from the control plane for %.0f s: %s",
                           self._log_name, time.monotonic() - last, exc)
            return 1
        self._last_ok = time.monotonic()
        if job.state.is_terminal():
            await self._end_forwarder()
            return 0 if job.state in (JobState.SUCCEEDED, JobState.CANCELLED) else 1
        if self.forwarder_pid and not _is_forwarder(self.forwarder_pid, self.job_id) \
                and job.state == JobState.RUNNING:
            # the forwarder died (the host rebooted it away): start it again on the same
            # local port, the one the hub's proxy routes to
            self.log.warning("%s: the forwarder is gone; starting it again", self._log_name)
            with contextlib.suppress(Exception):
                self.local_port, self.forwarder_pid = await self._start_forwarder()
        return None

    # -- stop -------------------------------------------------------------------------------

    async def stop(self, now: bool = False) -> None:
        await self._end("stopped from the hub")

    async def _end(self, why: str) -> None:
        if self.job_id:
            try:
                await asyncio.to_thread(self._client().cancel, self.job_id)
            except (NotFoundError, ConflictError):
                pass  # gone already, or already over
            except SkyportError as exc:
                self.log.error("%s: cancelling job %s failed: %s", self._log_name,
                               self.job_id, exc)
        await self._end_forwarder()
        if self.job_id:  # the forwarder's log: kept while the server lives, for debugging
            (_runtime_dir() / f"{self.job_id}.log").unlink(missing_ok=True)
        self._ready = False

    async def _end_forwarder(self) -> None:
        pid = self.forwarder_pid
        if pid and _is_forwarder(pid, self.job_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                proc = _forwarders.get(pid)
                if proc is not None and proc.poll() is not None:
                    break
                if proc is None and not _is_forwarder(pid, self.job_id):
                    break
                await asyncio.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc = _forwarders.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, 5)
        self.forwarder_pid = 0
