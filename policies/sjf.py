"""Shortest job first: shortest requested time first, no backfilling."""

from __future__ import annotations

from collections.abc import Sequence

from skyport.timetable.policy import Discipline, Policy
from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["SjfPolicy", "by_estimate"]


def by_estimate(job: QueuedJob) -> tuple[float, float]:
    """Sort key: requested time, then submit time."""
    return (job.est_runtime_s, job.submit_s)


class SjfPolicy(Policy):
    """Shortest requested time first; the first job that does not fit blocks the queue."""

    name = "sjf"
    discipline = Discipline.STRICT

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        return sorted(jobs, key=by_estimate)
