"""Availability profile: free processors of one pool as a step function of time.

Breakpoint ``k`` says that from its time until the next breakpoint's there
are that many processors free; the last breakpoint lasts forever with the
pool's full capacity free.

"Now" has two values when some running job is past its estimate (or ends
exactly now): the processors free *right now*, and those free once the
overrunning jobs are treated as ending now. A job that fits with the first
can start now; one that only fits with the second is planned for now but has
to wait for the overrunning jobs to actually end. The first value is kept
apart (``_free_now``); the breakpoints hold the second.

Layout (why this is fast in pure Python): the breakpoints are cut into chunks
of at most ``2 * CHUNK`` consecutive breakpoints. Each chunk keeps its times,
its free counts less a pending offset ``_add`` (a reservation covering a
whole chunk changes that one number), and the true minimum and maximum free
count. A search skips whole chunks whose maximum is too small (no start
there) or whose minimum is large enough (the job keeps fitting) and walks
breakpoints one by one only in chunks that are mixed for the width asked.
Built-ins (``bisect``, ``min``, ``max``, slice assignment) do the rest.

Search is first-fit. The profile also remembers, per job width, a time before
which no breakpoint has that many processors free. Reservations only lower
free counts and an inserted breakpoint copies the one before it, so such a
hint never becomes wrong, and each job's search starts where the last job of
its width found room.

``tests/unit/timetable/reference_profile.py`` keeps the plain list version;
a property test checks that both answer every query alike.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

__all__ = ["CHUNK", "MIN_HOLD_S", "AvailabilityProfile", "Slot"]

MIN_HOLD_S = 1.0
"""Shortest time a reservation holds its processors: a zero time limit is planned as this."""

CHUNK = 32
"""Breakpoints per chunk after a split; a chunk splits in two past ``2 * CHUNK``."""

Slot = tuple[float, bool]
"""Opaque handle returned by :meth:`AvailabilityProfile.earliest`: (start, fits right now)."""


class AvailabilityProfile:
    """Free processors over time on one pool, with first-fit search and reservation."""

    __slots__ = (
        "capacity",
        "now_s",
        "_free_now",
        "_overrun",
        "_starts",
        "_times",
        "_free",
        "_add",
        "_lo",
        "_hi",
        "_hint",
        "_found",
    )

    def __init__(
        self,
        now_s: float,
        capacity: int,
        free_now: int,
        releases: Iterable[tuple[float, int]],
    ) -> None:
        """Build the profile from the processors free now and ``(end_s, procs)`` releases.

        A release at or before ``now_s`` (a job past its estimate) frees its
        processors just after now, on the second value at ``now_s``.
        """
        self.capacity = capacity
        self.now_s = now_s
        self._free_now = free_now
        self._overrun = False
        times = [now_s]
        free = [free_now]
        current = free_now
        for end_s, procs in sorted(releases):
            current += procs
            if end_s <= now_s:
                self._overrun = True
                free[0] = current
            elif end_s == times[-1]:
                free[-1] = current
            else:
                times.append(end_s)
                free.append(current)
        self._starts: list[float] = []
        self._times: list[list[float]] = []
        self._free: list[list[int]] = []
        for k in range(0, len(times), CHUNK):
            chunk = free[k : k + CHUNK]
            self._starts.append(times[k])
            self._times.append(times[k : k + CHUNK])
            self._free.append(chunk)
        self._add = [0] * len(self._starts)
        self._lo = [min(chunk) for chunk in self._free]
        self._hi = [max(chunk) for chunk in self._free]
        self._hint: dict[int, float] = {}
        self._found: dict[int, tuple[list[float], list[float]]] = {}

    def steps(self) -> list[tuple[float, int]]:
        """The breakpoints as ``(time_s, free procs)`` pairs; "now" twice if jobs overrun."""
        out = [(self.now_s, self._free_now)] if self._overrun else []
        for times, free, add in zip(self._times, self._free, self._add, strict=True):
            out.extend((t, f + add) for t, f in zip(times, free, strict=True))
        return out

    @staticmethod
    def start_of(slot: Slot) -> float:
        """The time a slot starts."""
        return slot[0]

    @staticmethod
    def is_now(slot: Slot) -> bool:
        """Whether a job placed at this slot has its processors free right now."""
        return slot[1]

    def earliest(self, procs: int, duration_s: float, not_before_s: float | None = None) -> Slot:
        """The first slot where ``procs`` stay free for ``duration_s`` seconds.

        Durations under :data:`MIN_HOLD_S` are planned as that.
        With ``not_before_s`` the search starts there (a breakpoint is added
        at that time if missing). ``procs`` must not exceed the capacity.
        """
        if procs > self.capacity:
            raise ValueError(f"procs={procs} exceeds the pool's capacity {self.capacity}")
        if duration_s < MIN_HOLD_S:
            duration_s = MIN_HOLD_S
        hinted = self._hint.get(procs, self.now_s)
        found = self._found.get(procs)
        if found is None:
            found = self._found[procs] = ([], [])
        durations, found_at = found
        below = bisect_right(durations, duration_s)
        bound = found_at[below - 1] if below and found_at[below - 1] > hinted else hinted
        from_s = bound
        if not_before_s is not None and not_before_s > self.now_s:
            self._split(not_before_s)
            if not_before_s > from_s:
                from_s = not_before_s
        c = bisect_right(self._starts, from_s) - 1
        k = bisect_left(self._times[c], from_s)
        start_s, first_s = self._first_fit(c, k, procs, duration_s)
        if from_s == bound:
            # An unconstrained answer: a lower bound for this width from now on.
            if from_s == hinted:
                self._hint[procs] = first_s
            if not below or found_at[below - 1] < start_s:
                durations.insert(below, duration_s)
                found_at.insert(below, start_s)
                end = below + 1
                while end < len(found_at) and found_at[end] <= start_s:
                    end += 1
                del durations[below + 1 : end], found_at[below + 1 : end]
        return (start_s, start_s == self.now_s and self._free_now >= procs)

    def reserve(self, slot: Slot, duration_s: float, procs: int) -> None:
        """Take ``procs`` from ``slot`` on, for ``duration_s`` seconds."""
        start_s, now = slot
        if now:
            self._free_now -= procs
        if duration_s < MIN_HOLD_S:
            duration_s = MIN_HOLD_S
        end_s = start_s + duration_s
        self._split(end_s)
        starts, times, add = self._starts, self._times, self._add
        c0 = bisect_right(starts, start_s) - 1
        k0 = bisect_left(times[c0], start_s)
        c1 = bisect_right(starts, end_s) - 1
        k1 = bisect_left(times[c1], end_s)
        if c0 == c1:
            self._take(c0, k0, k1, procs)
            return
        self._take(c0, k0, len(times[c0]), procs)
        lo, hi = self._lo, self._hi
        for c in range(c0 + 1, c1):
            add[c] -= procs
            lo[c] -= procs
            hi[c] -= procs
        if k1:
            self._take(c1, 0, k1, procs)

    # -- internals ------------------------------------------------------------

    def _take(self, c: int, k0: int, k1: int, procs: int) -> None:
        """Subtract ``procs`` from breakpoints ``k0 .. k1 - 1`` of chunk ``c``."""
        free = self._free[c]
        if k0 == 0 and k1 == len(free):
            self._add[c] -= procs
            self._lo[c] -= procs
            self._hi[c] -= procs
            return
        # Free counts only go down: the chunk's minimum is the old one or a new low in
        # the slice, and its maximum moves only if the slice held it.
        seg = [f - procs for f in free[k0:k1]]
        free[k0:k1] = seg
        add = self._add[c]
        low = min(seg) + add
        if low < self._lo[c]:
            self._lo[c] = low
        if max(seg) + add + procs == self._hi[c]:
            self._hi[c] = max(free) + add

    def _first_fit(self, c: int, k: int, procs: int, duration_s: float) -> tuple[float, float]:
        """From breakpoint ``k`` of chunk ``c`` on: the first start that fits, and the
        first breakpoint's time with ``procs`` free (the new hint)."""
        starts, times, free, add, lo, hi = (
            self._starts,
            self._times,
            self._free,
            self._add,
            self._lo,
            self._hi,
        )
        n = len(starts)
        run_s = -1.0  # start of the current run of breakpoints with procs free
        end_s = 0.0  # run_s + duration_s
        running = False
        first_s: float | None = None
        while c < n:
            if k == 0:
                if running:
                    if starts[c] >= end_s:
                        break
                    if lo[c] >= procs:
                        c += 1
                        continue
                if hi[c] < procs:
                    running = False
                    c += 1
                    continue
                if not running and lo[c] >= procs:
                    running = True
                    run_s = starts[c]
                    end_s = run_s + duration_s
                    if first_s is None:
                        first_s = run_s
                    c += 1
                    continue
            ts = times[c]
            fs = free[c]
            need = procs - add[c]
            for j in range(k, len(ts)):
                if running:
                    if ts[j] >= end_s:
                        break
                    if fs[j] < need:
                        running = False
                elif fs[j] >= need:
                    running = True
                    run_s = ts[j]
                    end_s = run_s + duration_s
                    if first_s is None:
                        first_s = run_s
            else:
                c += 1
                k = 0
                continue
            break
        # Past the last breakpoint the whole pool is free, so a run is always open here.
        assert running and first_s is not None
        return run_s, first_s

    def _split(self, time_s: float) -> None:
        """Make sure a breakpoint sits at ``time_s`` (> now), copying the one before it."""
        starts = self._starts
        c = bisect_right(starts, time_s) - 1
        times = self._times[c]
        j = bisect_left(times, time_s)
        if j < len(times) and times[j] == time_s:
            return
        free = self._free[c]
        times.insert(j, time_s)
        free.insert(j, free[j - 1])
        if len(times) > 2 * CHUNK:
            add = self._add[c]
            self._times[c : c + 1] = [times[:CHUNK], times[CHUNK:]]
            self._free[c : c + 1] = [free[:CHUNK], free[CHUNK:]]
            starts.insert(c + 1, times[CHUNK])
            self._add.insert(c + 1, add)
            left, right = self._free[c], self._free[c + 1]
            self._lo[c : c + 1] = [min(left) + add, min(right) + add]
            self._hi[c : c + 1] = [max(left) + add, max(right) + add]
