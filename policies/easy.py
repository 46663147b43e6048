"""EASY backfilling: FCFS with one reservation, for the head job.

``easy`` tries backfill candidates in submit order, ``easy-sjf`` shortest
requested time first; the head job is the oldest in both.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.fcfs import by_submit
from policies.sjf import by_estimate
from skyport.timetable.policy import Capability, Discipline, Policy
from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["EasyPolicy", "EasySjfPolicy"]


class EasyPolicy(Policy):
    """Submit order; later jobs start early when they do not delay the head job."""

    name = "easy"
    discipline = Discipline.EASY
    capabilities = frozenset({Capability.BACKFILL})

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        return sorted(jobs, key=by_submit)


class EasySjfPolicy(EasyPolicy):
    """EASY with backfill candidates tried shortest requested time first."""

    name = "easy-sjf"

    def backfill_order(
        self, snapshot: Snapshot, candidates: Sequence[QueuedJob]
    ) -> Sequence[QueuedJob]:
        return sorted(candidates, key=by_estimate)
