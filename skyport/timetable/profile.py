"""Availability profile: free processors of one pool as a step function of time.

Breakpoint ``k`` says that from ``times[k]`` until ``times[k + 1]`` there are
``free[k]`` processors free; the last breakpoint lasts forever with the
pool's full capacity free.

"Now" has two breakpoints when some running job is past its estimate: index 0
holds the processors free *right now*, index 1 (same time) those free once
the overrunning jobs are treated as ending now. A job that fits from index 0
can start now; one that only fits from index 1 is planned for now but has to
wait for the overrunning jobs to actually end.

Search is first-fit. Walking the profile from the start for every job is the
quadratic naive form; instead the profile remembers, per job width, an index
before which no breakpoint has that many processors free. Reservations only
lower free counts and an insertion copies an earlier breakpoint, so such a
hint never becomes wrong, and each job's search starts where the last job of
its width found room.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

__all__ = ["MIN_HOLD_S", "AvailabilityProfile", "Slot"]

MIN_HOLD_S = 1.0
"""Shortest time a reservation holds its processors: a zero time limit is planned as this."""

Slot = int
"""Opaque handle of a breakpoint returned by :meth:`AvailabilityProfile.earliest`."""


class AvailabilityProfile:
    """Free processors over time on one pool, with first-fit search and reservation."""

    __slots__ = ("capacity", "now_s", "_times", "_free", "_hint")

    def __init__(
        self,
        now_s: float,
        capacity: int,
        free_now: int,
        releases: Iterable[tuple[float, int]],
    ) -> None:
        """Build the profile from the processors free now and ``(end_s, procs)`` releases.

        A release at or before ``now_s`` (a job past its estimate) frees its
        processors just after now, on the second breakpoint at ``now_s``.
        """
        self.capacity = capacity
        self.now_s = now_s
        times = [now_s]
        free = [free_now]
        current = free_now
        for end_s, procs in sorted(releases):
            end_s = max(end_s, now_s)
            current += procs
            if end_s == times[-1] and len(times) > 1:
                free[-1] = current
            else:
                times.append(end_s)
                free.append(current)
        self._times = times
        self._free = free
        self._hint: dict[int, int] = {}

    def steps(self) -> list[tuple[float, int]]:
        """The breakpoints as ``(time_s, free procs)`` pairs."""
        return list(zip(self._times, self._free, strict=True))

    def start_of(self, slot: Slot) -> float:
        """The time a slot starts."""
        return self._times[slot]

    @staticmethod
    def is_now(slot: Slot) -> bool:
        """Whether a job placed at this slot has its processors free right now."""
        return slot == 0

    def earliest(self, procs: int, duration_s: float, not_before_s: float | None = None) -> Slot:
        """The first slot where ``procs`` stay free for ``duration_s`` seconds.

        Durations under :data:`MIN_HOLD_S` are planned as that.
        With ``not_before_s`` the search starts there. ``procs`` must not
        exceed the capacity.
        """
        if procs > self.capacity:
            raise ValueError(f"procs={procs} exceeds the pool's capacity {self.capacity}")
        times, free = self._times, self._free
        duration_s = max(duration_s, MIN_HOLD_S)
        hint = self._hint
        i = hint.get(procs, 0)
        while free[i] < procs:
            i += 1
        hint[procs] = i
        if not_before_s is not None and not_before_s > self.now_s:
            i = max(i, self._split(not_before_s, 1))
        n = len(times)
        while True:
            while free[i] < procs:
                i += 1
            end_s = times[i] + duration_s
            j = i + 1
            while j < n and times[j] < end_s:
                if free[j] < procs:
                    break
                j += 1
            else:
                return i
            i = j

    def reserve(self, slot: Slot, duration_s: float, procs: int) -> None:
        """Take ``procs`` from ``slot`` on, for ``duration_s`` seconds."""
        end = self._split(self._times[slot] + max(duration_s, MIN_HOLD_S), slot + 1)
        free = self._free
        for k in range(slot, end):
            free[k] -= procs

    def _split(self, time_s: float, lo: int) -> int:
        """Index of the breakpoint at ``time_s`` (from ``lo`` on), inserted if missing."""
        times = self._times
        j = bisect_left(times, time_s, lo)
        if j < len(times) and times[j] == time_s:
            return j
        times.insert(j, time_s)
        self._free.insert(j, self._free[j - 1])
        return j
