"""``JobSecrets``: what a job's owner put for its agents (``PUT /v1/jobs/{id}/secrets/NAME``).

A hub puts its API token here before the server starts; the job's agent reads
it (``GET /agent/v1/jobs/{id}/secrets/{name}``) when the server starts, which
may be long after (a queued job).  So the values outlive a control-plane
restart: one file per job, ``<state>/secrets/<job id>.json``, mode 0600 in a
0700 directory of the state directory, which only the control plane's user
reads.  Never in the job's storage prefix (agents and the storage's other
readers see that), the script, an event or a log.

A file is removed once its job has ended: a sweep every ``sweep_s`` asks the
Core about the jobs that hold secrets (few: servers that a hub started), and
starts with whatever files a restarted control plane finds.  (Not one pushed
wait per job: each would hold one of the Core's ``MAX_WAITERS`` for the job's
whole life.)  Without a directory (``None``: tests of other parts) the values
live in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets as _random
from collections.abc import Awaitable, Callable
from pathlib import Path

from skyport.errors import ConflictError, ValidationError

__all__ = ["MAX_SECRETS_PER_JOB", "JobSecrets"]

log = logging.getLogger(__name__)

MAX_SECRETS_PER_JOB = 16
# a job id as the Core makes it (hex, an array task ``A_i``): never a path
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# whether the job is terminal or gone
JobOver = Callable[[str], Awaitable[bool]]
SWEEP_S = 10.0


def _check_id(job_id: str) -> str:
    if not _JOB_ID_RE.match(job_id) or ".." in job_id:
        raise ValidationError("job_id", job_id, "a Sky Port job id")
    return job_id


class JobSecrets:
    def __init__(self, directory: Path | None = None, sweep_s: float = SWEEP_S) -> None:
        self.directory = directory
        self.sweep_s = sweep_s
        self._memory: dict[str, dict[str, str]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        if directory is not None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)  # an existing directory too

    def _path(self, job_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{_check_id(job_id)}.json"

    def _load(self, job_id: str) -> dict[str, str]:
        if self.directory is None:
            return dict(self._memory.get(job_id, {}))
        try:
            held = json.loads(self._path(job_id).read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("the secrets of job %s are unreadable: ignored", job_id)
            return {}
        return {str(k): str(v) for k, v in held.items()} if isinstance(held, dict) else {}

    def put(self, job_id: str, name: str, value: str) -> None:
        held = self._load(job_id)
        if name not in held and len(held) >= MAX_SECRETS_PER_JOB:
            raise ConflictError(f"job {job_id} holds {MAX_SECRETS_PER_JOB} secrets (the most)")
        held[name] = value
        if self.directory is None:
            self._memory[job_id] = held
            return
        path = self._path(job_id)
        tmp = path.with_name(f".{path.name}.{_random.token_hex(6)}.tmp")
        # created 0600 before a byte is written: never readable by anyone else, not even briefly
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(held, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, job_id: str, name: str) -> str | None:
        return self._load(job_id).get(name)

    def forget(self, job_id: str) -> None:
        """Drop every secret of the job (it has ended)."""
        self._memory.pop(job_id, None)
        if self.directory is not None:
            self._path(job_id).unlink(missing_ok=True)

    def held(self) -> list[str]:
        """The jobs that hold secrets."""
        if self.directory is None:
            return sorted(self._memory)
        return sorted(p.stem for p in self.directory.glob("*.json")
                      if _JOB_ID_RE.match(p.stem))

    # -- removal when the job ends ----------------------------------------------------

    def start(self, over: JobOver) -> None:
        """Sweep in this loop from now on (again: nothing to do)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(over))

    async def sweep(self, over: JobOver) -> list[str]:
        """Forget the secrets of every job that is over; those jobs."""
        gone = []
        for job_id in self.held():
            try:
                if await over(job_id):
                    self.forget(job_id)
                    gone.append(job_id)
            except Exception as exc:  # the Core restarting: the next sweep asks again
                log.warning("secrets of job %s: is it over? %s", job_id, exc)
        return gone

    async def _sweep_forever(self, over: JobOver) -> None:
        while True:
            await self.sweep(over)
            await asyncio.sleep(self.sweep_s)

    async def close(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
