"""Fair share: owners who used less recently go first, with EASY backfilling.

An owner's priority is their decayed past usage (``Snapshot.usage``, in
processor-seconds, kept by the caller's :class:`~skyport.timetable.usage.UsageLedger`)
plus what their running jobs have used so far in this run. Lower usage goes
first; ties go to the older job. The head job holds EASY's one reservation.
"""

from __future__ import annotations

from collections.abc import Sequence

from skyport.timetable.policy import Capability, Discipline, Policy, PolicyConfig
from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["FairShareConfig", "FairSharePolicy"]


class FairShareConfig(PolicyConfig):
    """Knobs of the fair-share policy."""

    count_running: bool = True
    """Add the processor-seconds of an owner's running jobs to their past usage."""


class FairSharePolicy(Policy):
    """Least recent usage first, EASY backfilling."""

    name = "fairshare"
    discipline = Discipline.EASY
    capabilities = frozenset({Capability.BACKFILL, Capability.NEEDS_USAGE})
    config_model = FairShareConfig
    config: FairShareConfig

    def effective_usage(self, snapshot: Snapshot) -> dict[str, float]:
        """Each owner's usage as this policy ranks it."""
        usage = dict(snapshot.usage)
        if self.config.count_running:
            now = snapshot.now_s
            for job in snapshot.running:
                used = job.procs * max(0.0, now - job.start_s)
                usage[job.owner] = usage.get(job.owner, 0.0) + used
        return usage

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        usage = self.effective_usage(snapshot)
        return sorted(jobs, key=lambda job: (usage.get(job.owner, 0.0), job.submit_s))
