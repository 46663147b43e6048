"""Sky Port's house policy (``sky``): predicted runtimes, slowdown order, EASY, an aging guard.

Three levers, each from the backfilling literature:

* **Predicted runtimes for planning.** A job is planned to run for the mean
  runtime of its owner's last two ended jobs, never more than it requested
  (:mod:`skyport.timetable.predict`, after Tsafrir, Etsion and Feitelson
  2007); a running job that outlives its prediction is re-predicted a step
  further. Shadow times and backfill decisions use these, so a job that
  asked for a day but whose owner's jobs take ten minutes backfills like a
  ten-minute job. Jobs are still killed only at their requested time.
* **Slowdown order.** The queue is ordered by ``(wait_s + w) / (log2(procs
  + 1) * max(predicted_s, tau_s))``, highest first: a minute of waiting
  costs a short job more bounded slowdown than a long one. ``w`` is
  ``boost_s``, a head start that keeps a fresh short job from being pinned
  behind an old wide one. Backfill candidates go shortest prediction first.
* **Aging guard.** A job that has waited ``max_wait_s`` is *aged*: aged jobs
  go before every other job, oldest first, and while any job is aged the
  pass plans with requested times, not predictions, so EASY's reservation
  for the head is one no backfilled job can break (a job ends by its
  requested time, where it is killed).

The bound: a job's wait is at most ``max_wait_s``, plus the time to serve
the aged jobs submitted before it, plus one longest requested time. Once
aged it is overtaken only by older aged jobs and by backfilled jobs; once it
is the head, its reservation is computed from requested ends, which
backfilling never delays, so it starts by the latest requested end of the
jobs running when it became the head. When no other job is aged as it ages
(the common case), its wait is at most ``max_wait_s`` plus the longest
requested time; ``tests/unit/timetable/test_sky.py`` checks that on random
workloads.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import replace

from pydantic import Field

from skyport.timetable.policy import Capability, Discipline, Policy, PolicyConfig
from skyport.timetable.predict import correct, owner_means, predict
from skyport.timetable.snapshot import JobId, QueuedJob, RunningJob, Snapshot

__all__ = ["SkyConfig", "SkyPolicy"]


class SkyConfig(PolicyConfig):
    """Knobs of the house policy."""

    max_wait_s: float = Field(default=36 * 3600.0, gt=0)
    """Wait after which a job goes before all non-aged jobs, oldest first."""
    tau_s: float = Field(default=10.0, gt=0)
    """Predictions shorter than this count as this (the bounded-slowdown threshold)."""
    boost_s: float = Field(default=1.0, ge=0)
    """Head start added to every wait in the priority."""
    alpha: float = Field(default=1.0, gt=0, le=2)
    """Exponent on the job's size in the priority: below 1 lets wide, long jobs catch up sooner."""
    depth: int = Field(default=2, ge=1, le=16)
    """How many of the owner's last ended jobs the prediction averages."""
    reserve_oldest: int = Field(default=0, ge=0, le=16)
    """How many of the longest-waiting jobs hold a reservation besides the head."""
    reserve_after_s: float = Field(default=0.0, ge=0)
    """Only jobs that have waited this long get those reservations."""
    predict: bool = True
    """Plan with predictions (False: with requested times, for comparison)."""
    order_on: str = Field(default="predicted", pattern="^(predicted|requested)$")
    """Which runtime the queue order's priority divides by."""


class SkyPolicy(Policy):
    """Slowdown order on predicted runtimes, EASY backfilling, an aging guard."""

    name = "sky"
    discipline = Discipline.EASY
    capabilities = frozenset({Capability.BACKFILL, Capability.NEEDS_HISTORY, Capability.PREDICTS})
    config_model = SkyConfig
    config: SkyConfig

    _requested: dict[JobId, float] = {}

    def planning_view(self, snapshot: Snapshot) -> Snapshot:
        self._requested = {}
        if not self.config.predict or not snapshot.history:
            return snapshot
        aged_before = snapshot.now_s - self.config.max_wait_s
        if any(job.submit_s <= aged_before for job in snapshot.queued):
            return snapshot  # the aging guard: an aged head's reservation must hold
        self._requested = {job.id: job.est_runtime_s for job in snapshot.queued}
        means = owner_means(snapshot.history, self.config.depth)
        queued = tuple(_predicted_queued(job, means.get(job.owner)) for job in snapshot.queued)
        now = snapshot.now_s
        running = tuple(
            _predicted_running(job, means.get(job.owner), now) for job in snapshot.running
        )
        return replace(snapshot, queued=queued, running=running)

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        now = snapshot.now_s
        aged_before = now - self.config.max_wait_s
        tau = self.config.tau_s
        boost = self.config.boost_s
        requested = self._requested if self.config.order_on == "requested" else {}
        alpha = self.config.alpha

        def key(job: QueuedJob) -> tuple[int, float, float]:
            if job.submit_s <= aged_before:
                return (0, job.submit_s, 0.0)
            est = requested.get(job.id, job.est_runtime_s)
            size = (math.log2(job.procs + 1) * (est if est > tau else tau)) ** alpha
            return (1, -(now - job.submit_s + boost) / size, job.submit_s)

        return sorted(jobs, key=key)

    def also_reserve(
        self, snapshot: Snapshot, waiting: Sequence[QueuedJob]
    ) -> Sequence[QueuedJob]:
        count = self.config.reserve_oldest
        if not count:
            return ()
        before = snapshot.now_s - self.config.reserve_after_s
        old = [job for job in waiting if job.submit_s <= before]
        if len(old) > count:
            old = heapq.nsmallest(count, old, key=_by_submit)
        return sorted(old, key=_by_submit)

    def backfill_order(
        self, snapshot: Snapshot, candidates: Sequence[QueuedJob]
    ) -> Sequence[QueuedJob]:
        return sorted(candidates, key=_by_estimate)


def _by_submit(job: QueuedJob) -> tuple[float, str]:
    return (job.submit_s, str(job.id))


def _by_estimate(job: QueuedJob) -> tuple[float, float]:
    return (job.est_runtime_s, job.submit_s)


def _predicted_queued(job: QueuedJob, mean_s: float | None) -> QueuedJob:
    est = predict(mean_s, job.est_runtime_s)
    if est == job.est_runtime_s:
        return job
    return QueuedJob(
        job.id,
        job.owner,
        job.submit_s,
        job.procs,
        est,
        job.nodes,
        job.priority,
        job.allowed_pools,
    )


def _predicted_running(job: RunningJob, mean_s: float | None, now_s: float) -> RunningJob:
    requested = job.est_runtime_s
    est = correct(predict(mean_s, requested), now_s - job.start_s, requested)
    if est == requested:
        return job
    return RunningJob(job.id, job.owner, job.pool, job.procs, job.start_s, est)
