"""Aged shortest-first with EASY backfilling (``easy-aged-sjf``), Sky Port's own policy.

Bounded slowdown is wait over runtime, so a short job's wait costs far more
than a long one's: the queue is ordered shortest requested time first, and
the head job (the shortest, not the oldest) holds EASY's reservation, with
backfill candidates also shortest first. Pure shortest-first starves long
jobs under a stream of short ones, so a job that has waited ``max_wait_s``
becomes *aged*: aged jobs go before every other job, oldest first.

Why no job starves: once aged, a job is overtaken only by jobs that aged
before it (finitely many: they were submitted earlier) and by backfilled
jobs, which by EASY's rule never delay the head's reservation. So when it
becomes the head, it starts by its shadow time, at most the longest
requested time of the running jobs away (or as soon as an overrunning job
ends). Its wait is bounded by ``max_wait_s`` plus the time to serve the
older aged jobs ahead of it, each of which holds the reservation in turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from skyport.timetable.policy import Capability, Discipline, Policy, PolicyConfig
from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["AgedSjfConfig", "AgedSjfPolicy"]


class AgedSjfConfig(PolicyConfig):
    """Knobs of the aged shortest-first policy."""

    max_wait_s: float = Field(default=24 * 3600.0, gt=0)
    """Wait after which a job goes before all non-aged jobs, oldest first."""


class AgedSjfPolicy(Policy):
    """Shortest requested time first, aged jobs first, EASY backfilling."""

    name = "easy-aged-sjf"
    discipline = Discipline.EASY
    capabilities = frozenset({Capability.BACKFILL})
    config_model = AgedSjfConfig
    config: AgedSjfConfig

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        aged_before = snapshot.now_s - self.config.max_wait_s

        def key(job: QueuedJob) -> tuple[bool, float, float]:
            if job.submit_s <= aged_before:
                return (False, job.submit_s, 0.0)
            return (True, job.est_runtime_s, job.submit_s)

        return sorted(jobs, key=key)
