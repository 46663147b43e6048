"""Memory of a control plane and of one job's processes, sampled in a thread.

One helper for the data benchmark (``benchmarks/data.py``) and the large-data
tests (``tests/integration/test_data_large.py``): the summed RSS of every
process in the control plane's session (API, Ray, the Core and gate actors;
the local gate's agents too) plus the job's own processes (``SKYPORT_JOB_ID``
in their environment), every ``interval_s``.
"""

from __future__ import annotations

import os
import threading

__all__ = ["MemorySampler", "job_pids", "rss", "session_pids"]


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def session_pids(sid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    found.add(int(entry))
            except OSError:
                continue
    return found


def job_pids(job_id: str) -> set[int]:
    """Live processes whose environment says they belong to ``job_id``."""
    marker = f"SKYPORT_JOB_ID={job_id}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                continue
    return found


class MemorySampler:
    """``idle`` at start; ``peak`` (session + job), ``peak_cp`` (session only: the
    control plane with its local agents) and ``peak_job`` (the job's processes)."""

    def __init__(self, sid: int, interval_s: float = 0.2) -> None:
        self.sid = sid
        self.job_id = ""
        self.interval_s = interval_s
        self.peak_cp = self.peak_job = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.idle = self.sample()
        self.peak = self.idle

    def sample(self) -> int:
        session = session_pids(self.sid)
        job = job_pids(self.job_id) if self.job_id else set()
        cp = sum(rss(p) for p in session)
        own = sum(rss(p) for p in job - session)
        self.peak_cp = max(self.peak_cp, cp)
        self.peak_job = max(self.peak_job, sum(rss(p) for p in job))
        return cp + own

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
