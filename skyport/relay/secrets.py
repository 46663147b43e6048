"""``JobSecrets``: what a job's owner put for its agents (``PUT /v1/jobs/{id}/secrets/NAME``).

A hub puts its API token here before the server starts; the job's agent reads
it (``GET /agent/v1/jobs/{id}/secrets/{name}``) when the server starts, which
may be long after (a queued job).  So the values outlive a control-plane
restart: one file per job, ``<state>/secrets/<job id>.json``, mode 0600 in a
0700 directory of the state directory, which only the control plane's user
reads.  Never in the job's storage prefix (agents and the storage's other
readers see that), the script, an event or a log.

A file is removed when its job ends: ``watch`` waits on the Core's pushed
wait (``WaitJob``) for each job that holds secrets, and ``resume`` starts
those waits again for the files a restarted control plane finds.  Without a
directory (``None``: tests of other parts) the values live in memory only.
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

# waits until the job is terminal; True when it is (or is gone), False to wait again
JobEnded = Callable[[str], Awaitable[bool]]


def _check_id(job_id: str) -> str:
    if not _JOB_ID_RE.match(job_id) or ".." in job_id:
        raise ValidationError("job_id", job_id, "a Sky Port job id")
    return job_id


class JobSecrets:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._memory: dict[str, dict[str, str]] = {}
        self._watched: dict[str, asyncio.Task[None]] = {}
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

    def watch(self, job_id: str, ended: JobEnded) -> None:
        """Forget the job's secrets once ``ended(job_id)`` says it is over (this loop)."""
        task = self._watched.get(job_id)
        if task is not None and not task.done():
            return

        async def run() -> None:
            loop, failures = asyncio.get_running_loop(), 0
            while True:
                asked = loop.time()
                try:
                    if await ended(job_id):
                        break
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the Core restarting: ask again, a bit later
                    failures += 1
                    log.warning("secrets of job %s: waiting for its end failed (%s)",
                                job_id, exc)
                    await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
                if loop.time() - asked < 1.0:  # the Core answered at once (too many wait)
                    await asyncio.sleep(1.0)
            self.forget(job_id)
            self._watched.pop(job_id, None)

        self._watched[job_id] = asyncio.get_running_loop().create_task(run())

    def resume(self, ended: JobEnded) -> None:
        """Watch every job whose secrets a (restarted) control plane finds."""
        for job_id in self.held():
            self.watch(job_id, ended)

    async def close(self) -> None:
        tasks = list(self._watched.values())
        self._watched.clear()
        for task in tasks:
            # asyncio.wait_for (3.11) may swallow a cancel that meets its inner result
            while not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.1)
            with contextlib.suppress(BaseException):
                task.result()
