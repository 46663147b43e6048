"""Running a job's payload: its own process group, CPU affinity, time limit, log pump.

The payload writes stdout and stderr to files in its working directory and a
``LogPump`` thread tails those files to a sink (the REST API).  A slow or
unreachable control plane therefore never blocks the payload, and a chunk the
sink refused is sent again, from the same offset, on the next round.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from skyport.agent.isolation import NO_ISOLATION, Isolation
from skyport.agent.procfs import kill_group

__all__ = ["LogPump", "LogSink", "Payload", "PayloadResult", "exit_code_of"]

log = logging.getLogger(__name__)

LogSink = Callable[[str, int, bytes], object]
"""``sink(stream, offset, data)``: deliver ``data`` found at ``offset`` of ``stream``."""


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N reports 128+N."""
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _thread_affinity(cores: Collection[int] | None) -> Iterator[None]:
    """Pin the calling thread to ``cores`` for the block; a child forked in it inherits them.

    ``sched_setaffinity(0, ...)`` changes the calling thread only, so this is
    safe beside other threads, unlike a ``preexec_fn``.
    """
    if not cores:
        yield
        return
    old = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, set(cores))
    except OSError as exc:
        log.warning("cannot pin the payload to cores %s: %s", sorted(cores), exc)
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


@dataclass(frozen=True)
class PayloadResult:
    exit_code: int
    timed_out: bool = False
    stopped: bool = False
    duration_s: float = 0.0


class Payload:
    """One payload process, leader of its own process group (same session as the agent)."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
                 stdout_path: Path, stderr_path: Path,
                 cores: Collection[int] | None = None,
                 isolation: Isolation = NO_ISOLATION, binds: Sequence[Path] = ()) -> None:
        self.argv = list(argv)
        self.isolation = isolation
        self.binds = tuple(binds)
        self.cwd = cwd
        self.env = dict(env)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.cores = cores
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("payload not started")
        return self._proc.pid

    def start(self) -> int:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err, \
                _thread_affinity(self.cores):
            argv = self.isolation.argv(self.argv, cwd=self.cwd, binds=self.binds)
            self._proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          process_group=0, close_fds=True,
                                          **self.isolation.popen_kwargs())
        log.info("payload started: pid %d, cores %s", self._proc.pid,
                 sorted(self.cores) if self.cores else "all")
        return self._proc.pid

    def poll(self) -> int | None:
        """The exit code once the leader has exited, else None."""
        rc = self._proc.poll() if self._proc is not None else None
        return None if rc is None else exit_code_of(rc)

    def kill(self, grace_s: float = 5.0) -> bool:
        """SIGTERM the whole group, SIGKILL it after ``grace_s``; True when nothing is left."""
        proc = self._proc
        if proc is None:
            return True
        gone = kill_group(proc.pid, grace_s, reap=proc.poll)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        return gone

    def run(self, *, time_limit_s: float | None = None, grace_s: float = 5.0,
            should_stop: Callable[[], bool] = lambda: False,
            poll_s: float = 0.1) -> PayloadResult:
        """Start (if needed) and wait, enforcing the time limit and honouring ``should_stop``.

        When the leader exits, what it left running in its group is killed
        too: a finished job holds no core.
        """
        if self._proc is None:
            self.start()
        t0 = time.monotonic()
        timed_out = stopped = False
        while True:
            code = self.poll()
            if code is not None:
                break
            if should_stop():
                stopped = True
                log.info("stop requested: killing the payload's process group")
                break
            if time_limit_s is not None and time.monotonic() - t0 >= time_limit_s:
                timed_out = True
                log.info("time limit of %ss reached: killing the payload", time_limit_s)
                break
            time.sleep(poll_s)
        self.kill(grace_s if (timed_out or stopped) else 0.5)
        code = self.poll()
        return PayloadResult(exit_code=code if code is not None else 128 + 9,
                             timed_out=timed_out, stopped=stopped,
                             duration_s=time.monotonic() - t0)


class LogPump:
    """Send what is appended to each stream's file to ``sink``, in order, at most once per
    acknowledged byte; a failed chunk is resent from the same offset next round.

    Each file is opened once (never through a symbolic link) and read through
    that handle from then on: the payload may own the folder, and a link it
    put in the file's place later must not make the agent read anything else.
    """

    def __init__(self, files: Mapping[str, Path], sink: LogSink, *, interval_s: float = 0.5,
                 max_chunk: int = 1 << 20) -> None:
        self.files = dict(files)
        self.sink = sink
        self.interval_s = interval_s
        self.max_chunk = max_chunk
        self.offsets = dict.fromkeys(self.files, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handles: dict[str, BinaryIO] = {}

    def _handle(self, stream: str) -> BinaryIO | None:
        f = self._handles.get(stream)
        if f is None:
            try:
                fd = os.open(self.files[stream], os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return None
            except OSError as exc:  # a symbolic link (ELOOP): never followed
                log.warning("not reading %s: %s", self.files[stream], exc)
                return None
            f = self._handles[stream] = os.fdopen(fd, "rb")
        return f

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()

    def pump_once(self) -> bool:
        """Send everything new; True when all of it was accepted."""
        ok = True
        for stream in self.files:
            f = self._handle(stream)
            if f is None:
                continue
            try:
                while True:
                    f.seek(self.offsets[stream])
                    data = f.read(self.max_chunk)
                    if not data:
                        break
                    self.sink(stream, self.offsets[stream], data)
                    self.offsets[stream] += len(data)
            except Exception as exc:  # the sink failed: keep the offset, resend later
                log.warning("sending %s at offset %d failed: %s", stream, self.offsets[stream],
                            exc)
                ok = False
        return ok

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="log-pump", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.pump_once()

    def stop(self, flush_timeout_s: float = 60.0) -> bool:
        """Stop the thread, then send what is left; True when everything was delivered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + flush_timeout_s
        try:
            while not self.pump_once():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(self.interval_s, 1.0))
            return True
        finally:
            self.close()
