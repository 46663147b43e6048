"""The plain availability profile, kept as the oracle for the chunked one.

A flat list of breakpoints scanned from the start for every query: slow
(quadratic over a pass) but short enough to check by eye. Same conventions
as :class:`skyport.timetable.profile.AvailabilityProfile`: breakpoint ``k``
holds ``free[k]`` processors from ``times[k]`` to ``times[k + 1]``; "now" has a
second breakpoint when some job ends at or before now (index 0: free right
now; index 1: free once those jobs count as ended).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from skyport.timetable.profile import MIN_HOLD_S

__all__ = ["ReferenceProfile"]


class ReferenceProfile:
    """Free processors over time as two flat lists; index-valued slots."""

    def __init__(
        self, now_s: float, capacity: int, free_now: int, releases: Iterable[tuple[float, int]]
    ) -> None:
        self.capacity = capacity
        self.now_s = now_s
        self.times = [now_s]
        self.free = [free_now]
        current = free_now
        for end_s, procs in sorted(releases):
            end_s = max(end_s, now_s)
            current += procs
            if end_s == self.times[-1] and len(self.times) > 1:
                self.free[-1] = current
            else:
                self.times.append(end_s)
                self.free.append(current)

    def steps(self) -> list[tuple[float, int]]:
        return list(zip(self.times, self.free, strict=True))

    def earliest(self, procs: int, duration_s: float, not_before_s: float | None = None) -> int:
        """Index of the first breakpoint from which ``procs`` stay free for ``duration_s``."""
        duration_s = max(duration_s, MIN_HOLD_S)
        first = 0
        if not_before_s is not None and not_before_s > self.now_s:
            first = self.split(not_before_s)
        for i in range(first, len(self.times)):
            end_s = self.times[i] + duration_s
            window = range(i, len(self.times))
            if all(self.free[j] >= procs for j in window if j == i or self.times[j] < end_s):
                return i
        raise AssertionError("the last breakpoint has the whole pool free")

    def reserve(self, slot: int, duration_s: float, procs: int) -> None:
        end = self.split(self.times[slot] + max(duration_s, MIN_HOLD_S))
        for k in range(slot, end):
            self.free[k] -= procs

    def split(self, time_s: float) -> int:
        """Index of the breakpoint at ``time_s`` (never index 0), inserted if missing."""
        j = bisect_left(self.times, time_s, 1)
        if j < len(self.times) and self.times[j] == time_s:
            return j
        self.times.insert(j, time_s)
        self.free.insert(j, self.free[j - 1])
        return j
