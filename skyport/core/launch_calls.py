"""The Core's launch calls: node 0 runs commands on node k through k's agent.

``$SKYPORT_MPIEXEC`` on node 0 asks for a launch on node k; node k's agent
long-polls for it, runs it and sends its output and exit code back; node 0's
relay reads them.  The registry (``skyport.core.launches``) lives in the
Core's memory: launches die with their job.  ``LaunchDesk`` adds the
authentication and the long-polls around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from skyport.core.launches import LaunchRegistry
from skyport.errors import ConflictError, PermissionDeniedError
from skyport.models import Job, JobState
from skyport.store import JobStore


class LaunchDesk:
    def __init__(self, store: JobStore, auth: Callable[[str, str], Awaitable[Job]],
                 node_names: Callable[[Job], list[str]]) -> None:
        self.store = store
        self.agent_auth = auth
        self._node_names = node_names
        self.launches = LaunchRegistry()
        self._launch_events: dict[str, asyncio.Event] = {}

    async def _launch_job(self, job_id: str, token: str) -> Job:
        """The job, if its cluster may launch now; launches die with their job."""
        job = await self.agent_auth(job_id, token)
        if job.state.is_terminal() or not job.state.has_cluster():
            self.launches.drop_job(job_id)
            self._launch_notify(job_id)
            raise ConflictError(f"job {job_id} is {job.state.value}: no launches")
        return job

    def job_changed(self, job_id: str, state: JobState) -> None:
        """A job that no longer holds a cluster ends its agents' launch polls now: a warm
        node's agent waits for its poll to end before it serves the next job."""
        if not state.has_cluster():
            self._launch_notify(job_id)

    def _launch_notify(self, job_id: str) -> None:
        event = self._launch_events.pop(job_id, None)
        if event is not None:
            event.set()

    async def _launch_wait(self, job_id: str, ready: Callable[[], bool], wait_s: float) -> None:
        deadline = time.monotonic() + min(max(wait_s, 0.0), 30.0)
        while not ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            event = self._launch_events.setdefault(job_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(left, 1.0))
            if self.store.get(job_id, events=False).state.is_terminal():
                return

    async def nodes(self, job_id: str, token: str) -> dict[str, Any]:
        job = await self._launch_job(job_id, token)
        return {"node_names": self._node_names(job)}

    async def create(
        self, job_id: str, token: str, node: int, argv: list[str], env: dict[str, str], cwd: str,
        op: str = "run",
    ) -> dict[str, Any]:
        job = await self._launch_job(job_id, token)
        launch = self.launches.create(job_id, node, job.nodes, argv, env, cwd, op)
        self._launch_notify(job_id)
        return {"launch_id": launch.id}

    async def poll(
        self, job_id: str, token: str, node: int, wait_s: float
    ) -> dict[str, Any]:
        """Node ``node``'s agent: launches to start and to kill (long-poll up to ``wait_s``)."""
        try:
            await self._launch_job(job_id, token)
        except ConflictError:
            return {"start": [], "cancel": [], "stop": True}
        reg = self.launches
        await self._launch_wait(job_id, lambda: reg.has_work(job_id, node), wait_s)
        # checked again after the wait: the attempt this poll began in may be over (a
        # requeue revokes its token), and its agent must not claim the next attempt's
        # launches (they would never run)
        try:
            await self._launch_job(job_id, token)
        except (ConflictError, PermissionDeniedError):
            return {"start": [], "cancel": [], "stop": True}
        answer = reg.claim(job_id, node)
        if answer["start"] or answer["cancel"]:
            self._launch_notify(job_id)
        return {**answer, "stop": False}

    async def output(
        self,
        job_id: str,
        token: str,
        launch_id: str,
        node: int,
        stream: str,
        offset: int,
        data: bytes,
    ) -> dict[str, int]:
        await self._launch_job(job_id, token)
        size = self.launches.append(job_id, launch_id, node, stream, offset, data)
        self._launch_notify(job_id)
        return {"size": size}

    async def exit(
        self, job_id: str, token: str, launch_id: str, node: int, exit_code: int
    ) -> dict[str, Any]:
        await self._launch_job(job_id, token)
        self.launches.finish(job_id, launch_id, node, exit_code)
        self._launch_notify(job_id)
        return {}

    async def read(
        self, job_id: str, token: str, launch_id: str, offsets: dict[str, int], wait_s: float
    ) -> dict[str, Any]:
        """Output past ``offsets`` and, once all is read, the exit code (long-poll)."""
        await self._launch_job(job_id, token)
        reg = self.launches

        def ready() -> bool:
            la = reg.get(job_id, launch_id)
            return la.state == "done" or any(
                la.size(s) > offsets.get(s, 0) for s in ("stdout", "stderr")
            )

        await self._launch_wait(job_id, ready, wait_s)
        return reg.read(job_id, launch_id, offsets)

    async def cancel(self, job_id: str, token: str, launch_id: str) -> dict:
        await self.agent_auth(job_id, token)
        self.launches.cancel(job_id, launch_id)
        self._launch_notify(job_id)
        return {}
