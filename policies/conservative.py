"""Conservative backfilling: a reservation for every queued job, in submit order.

The plan is rebuilt at every pass (compression): reservations move earlier
when jobs end before their estimates.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.fcfs import by_submit
from skyport.timetable.policy import Capability, Discipline, Policy
from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["ConservativePolicy"]


class ConservativePolicy(Policy):
    """Every job gets the earliest start that delays no earlier job."""

    name = "conservative"
    discipline = Discipline.CONSERVATIVE
    capabilities = frozenset({Capability.BACKFILL, Capability.RESERVES_ALL})

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        return sorted(jobs, key=by_submit)
