"""Pushed waits: a caller waiting for a job is woken by the job's next change, not a timer.

``JobWaiters`` keeps one ``asyncio.Event`` per waiting call, keyed by job id;
``notify(job_id)`` (hooked to the store's ``on_change``, so every committed
transition reaches it; and to log appends) sets every event of that job.  A
wait is bounded by the caller's timeout and by ``MAX_WAIT_S``, and at most
``MAX_WAITERS`` calls wait at once: past that a wait answers at once (the
caller asks again, which is polling, never a stuck Core).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

__all__ = ["MAX_WAITERS", "MAX_WAIT_S", "JobWaiters"]

MAX_WAIT_S = 25.0  # below the clients' 30 s read timeout
MAX_WAITERS = 256  # well below the Core actor's concurrency


class JobWaiters:
    def __init__(self, max_waiters: int = MAX_WAITERS) -> None:
        self.max_waiters = max_waiters
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._count = 0

    @property
    def waiting(self) -> int:
        """Calls waiting now (for tests and ``status``)."""
        return self._count

    def notify(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    async def wait(self, job_id: str, timeout_s: float) -> bool:
        """Until ``job_id`` changes (True) or ``timeout_s`` passes or too many wait (False)."""
        timeout_s = min(max(timeout_s, 0.0), MAX_WAIT_S)
        if timeout_s <= 0 or self._count >= self.max_waiters:
            return False
        event = asyncio.Event()
        self._events[job_id].add(event)
        self._count += 1
        try:
            await asyncio.wait_for(event.wait(), timeout=timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._count -= 1
            waiting = self._events.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[job_id]
