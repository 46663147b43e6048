"""First come, first served: jobs start in submit order, no backfilling."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from skyport.timetable.policy import Discipline, Policy
from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["FcfsPolicy", "by_submit"]

by_submit = attrgetter("submit_s")


class FcfsPolicy(Policy):
    """Submit order; the first job that does not fit blocks the queue."""

    name = "fcfs"
    discipline = Discipline.STRICT

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        return sorted(jobs, key=by_submit)
