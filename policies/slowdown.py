"""Slowdown-first with EASY backfilling and an aging guard (``easy-slowdown``).

Sky Port's own policy, aimed at mean bounded slowdown. Bounded slowdown is
wait over runtime, so a minute of wait costs a short job far more than a
long one. The queue is ordered by a priority that grows with the wait and
shrinks with the job's size::

    priority = (wait_s + 1) / (log2(procs + 1) * max(est_runtime_s, 10))

(the "UNICEF" form from the backfilling literature), highest first; the head
job holds EASY's one reservation and backfill candidates are tried shortest
requested time first.

Why no job starves: a job that has waited ``max_wait_s`` (7 days by default)
becomes *aged*, and aged jobs go before every other job, oldest first. Once
aged, a job is overtaken only by jobs that aged before it (finitely many:
they were submitted earlier) and by backfilled jobs, which by EASY's rule
never delay the head's reservation. When it becomes the head it starts by
its shadow time, at most the longest requested time among the running jobs
away. So its wait is at most ``max_wait_s`` plus the time to serve the
older aged jobs ahead of it plus one longest requested time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from policies.sjf import by_estimate
from skyport.timetable.policy import Capability, Discipline, Policy, PolicyConfig
from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["SlowdownConfig", "SlowdownPolicy"]


class SlowdownConfig(PolicyConfig):
    """Knobs of the slowdown-first policy."""

    max_wait_s: float = Field(default=7 * 86_400.0, gt=0)
    """Wait after which a job goes before all non-aged jobs, oldest first."""
    tau_s: float = Field(default=10.0, gt=0)
    """Estimates shorter than this count as this (the bounded-slowdown threshold)."""


class SlowdownPolicy(Policy):
    """Highest (wait + 1) / (log2(procs + 1) * estimate) first; aged jobs first; EASY."""

    name = "easy-slowdown"
    discipline = Discipline.EASY
    capabilities = frozenset({Capability.BACKFILL})
    config_model = SlowdownConfig
    config: SlowdownConfig

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        now = snapshot.now_s
        aged_before = now - self.config.max_wait_s
        tau = self.config.tau_s

        def key(job: QueuedJob) -> tuple[int, float, float]:
            if job.submit_s <= aged_before:
                return (0, job.submit_s, 0.0)
            size = math.log2(job.procs + 1) * max(job.est_runtime_s, tau)
            return (1, -(now - job.submit_s + 1.0) / size, job.submit_s)

        return sorted(jobs, key=key)

    def backfill_order(
        self, snapshot: Snapshot, candidates: Sequence[QueuedJob]
    ) -> Sequence[QueuedJob]:
        return sorted(candidates, key=by_estimate)
