"""Window protocol: replay random runs of consecutive jobs, each on an empty machine."""

from __future__ import annotations

import random
from collections.abc import Sequence

from benchmarks.timetable.swf import TraceJob

__all__ = ["pick_windows"]


def pick_windows(
    jobs: Sequence[TraceJob], count: int, length: int, seed: int
) -> list[Sequence[TraceJob]]:
    """``count`` windows of ``length`` consecutive jobs, starts drawn with ``seed``."""
    if length > len(jobs):
        raise ValueError(
            f"--window-len: {length} is larger than the trace ({len(jobs)} jobs); "
            f"use at most {len(jobs)}"
        )
    rng = random.Random(seed)
    firsts = [rng.randrange(0, len(jobs) - length + 1) for _ in range(count)]
    return [jobs[first : first + length] for first in firsts]
