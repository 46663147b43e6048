"""Sky Port's house policy (``sky``): predicted runtimes, slowdown order, reservations for the old.

Levers from the backfilling literature:

* **Predicted runtimes.** A queued job is predicted the mean runtime of its
  owner's last two ended jobs that asked for the same time limit (or, if
  none did, of their last two ended jobs), never more than it requested; an
  owner with no history, or whose jobs each ran at least 90 % of their
  request, is taken at their word (:mod:`skyport.timetable.predict`, after
  Tsafrir, Etsion and Feitelson 2007, who average the last two jobs). The
  priority below divides by the prediction, and backfilling plans queued
  jobs with it, so a job that asked for a day but whose owner's jobs take
  ten minutes is ranked and backfilled like a ten-minute job. Running jobs
  are planned at their requested ends (``plan_with="queued"``): on KTH-SP2
  this beat predicting them as well, since an underpredicted running job
  makes every reservation too early.
  Jobs are still killed only at their requested time.
* **Slowdown order.** The queue is ordered by ``(wait_s + boost_s) /
  (log2(procs + 1) * max(predicted_s, tau_s))``, highest first: a minute of
  waiting costs a short job more bounded slowdown than a long one; the
  hour-long ``boost_s`` keeps fresh jobs in shortest-first order among
  themselves. Backfill candidates go shortest prediction first.
* **Reservations for the longest-waiting.** The head of that order holds
  EASY's reservation, and so does the oldest job once it has waited
  ``reserve_after_s`` (2 days): backfilling delays neither
  (:meth:`Policy.also_reserve`).
* **Aging guard.** A job that has waited ``max_wait_s`` (3 days) is *aged*:
  aged jobs go before every other job, oldest first, and while any job is
  aged the pass plans with requested times only, so no backfilled job can
  break the aged head's reservation (every job ends by its requested time,
  where it is killed).

The bound, given jobs end by their requested time: a job's wait is at most
``max_wait_s + (k + 1) * R``, where ``R`` is the longest requested time and
``k`` the number of jobs submitted before it still queued when it aged. Once
aged it is overtaken only by those older aged jobs (and by backfilled jobs,
which delay no reservation); each of them, and then the job itself, starts
within ``R`` of becoming the head, because the head's reservation is
computed from requested ends and backfilling never moves it later. With no
older job waiting the bound is ``max_wait_s + R``.
``tests/unit/timetable/test_sky.py`` checks it on random workloads.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from pydantic import Field

from skyport.timetable.policy import Capability, Discipline, Policy, PolicyConfig
from skyport.timetable.predict import correct, owner_mean, predict, same_request_mean
from skyport.timetable.snapshot import Ended, JobId, QueuedJob, RunningJob, Snapshot

__all__ = ["SkyConfig", "SkyPolicy"]

_NONE: Mapping[JobId, float] = MappingProxyType({})

# An owner's mean recent runtime, and per time limit the mean of their jobs that asked for it.
_OwnerFacts = tuple[float | None, Mapping[float, float | None]]
_NO_FACTS: _OwnerFacts = (None, MappingProxyType({}))


class SkyConfig(PolicyConfig):
    """Knobs of the house policy (defaults chosen on KTH-SP2 and Lublin, see RESULTS.md)."""

    max_wait_s: float = Field(default=3 * 86_400.0, gt=0)
    """Wait after which a job goes before all non-aged jobs, oldest first."""
    reserve_oldest: int = Field(default=1, ge=0, le=16)
    """How many of the longest-waiting jobs hold a reservation besides the head."""
    reserve_after_s: float = Field(default=2 * 86_400.0, ge=0)
    """Only jobs that have waited this long get those reservations."""
    boost_s: float = Field(default=3600.0, ge=0)
    """Head start added to every wait in the priority."""
    tau_s: float = Field(default=10.0, gt=0)
    """Runtimes shorter than this count as this in the priority (bounded slowdown's threshold)."""
    depth: int = Field(default=2, ge=1, le=16)
    """How many of the owner's last ended jobs a prediction averages."""
    predict: bool = True
    """Use predictions at all (False: requested times everywhere, for comparison)."""
    order_on: str = Field(default="predicted", pattern="^(predicted|requested)$")
    """Which runtime the priority divides by."""
    plan_with: str = Field(default="queued", pattern="^(predicted|requested|queued)$")
    """Holds the engine plans with: predictions for queued jobs only, for all jobs, or none."""
    match_request: bool = True
    """Predict from the owner's last jobs with the same requested time, where there are any."""
    protect_after_s: float | None = Field(default=None, gt=0)
    """While some job has waited this long, plan with requested times (as when one is aged)."""


class SkyPolicy(Policy):
    """Slowdown order on predicted runtimes, EASY with reservations for the old, aging guard."""

    name = "sky"
    discipline = Discipline.EASY
    capabilities = frozenset({Capability.BACKFILL, Capability.NEEDS_HISTORY, Capability.PREDICTS})
    config_model = SkyConfig
    config: SkyConfig

    # This pass's runtime for the priority of each queued job, and the
    # snapshot it belongs to (order() receives the view planning_view made).
    _pass: tuple[Snapshot | None, Mapping[JobId, float]] = (None, _NONE)

    def __init__(self, config: PolicyConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._memo: dict[str, tuple[tuple[Ended, ...], _OwnerFacts]] = {}

    def planning_view(self, snapshot: Snapshot) -> Snapshot:
        cfg = self.config
        self._pass = (snapshot, _NONE)
        if not cfg.predict or not snapshot.history:
            return snapshot
        means = self._means(snapshot.history)
        predicted = _predicted_queue(snapshot.queued, means)
        guard_s = min(cfg.max_wait_s, cfg.protect_after_s or cfg.max_wait_s)
        aged_before = snapshot.now_s - guard_s
        if cfg.plan_with == "requested" or any(
            job.submit_s <= aged_before for job in snapshot.queued
        ):
            # the aging guard: the aged head's reservation is made on requested ends
            if cfg.order_on == "predicted":
                self._pass = (snapshot, {job.id: job.est_runtime_s for job in predicted})
            return snapshot
        running = snapshot.running
        if cfg.plan_with == "predicted":
            now = snapshot.now_s
            running = tuple(_predicted_running(job, means(job.owner), now) for job in running)
        view = replace(snapshot, queued=predicted, running=running)
        if cfg.order_on == "requested":
            self._pass = (view, {job.id: job.est_runtime_s for job in snapshot.queued})
        return view

    def _means(self, history: Mapping[str, tuple[Ended, ...]]) -> Callable[[str], _OwnerFacts]:
        """Each owner's prediction facts, recomputed only when their history changed.

        The facts are the mean over the owner's last jobs and, per time limit
        among their ended jobs, the mean over the last jobs that asked for it
        (None: take the request at its word). A caller's history hands out a
        new tuple when an owner's jobs end, so the memo is keyed on the
        tuple's identity (and holds it).
        """
        memo = self._memo
        depth = self.config.depth
        match = self.config.match_request

        def facts(owner: str) -> _OwnerFacts:
            ended = history.get(owner)
            if ended is None:
                return _NO_FACTS
            known = memo.get(owner)
            if known is not None and known[0] is ended:
                return known[1]
            by_request: dict[float, float | None] = {}
            if match:
                for requested in {e.requested_s for e in ended}:
                    by_request[requested] = same_request_mean(ended, requested, depth)[1]
            value = (owner_mean(ended, depth), by_request)
            memo[owner] = (ended, value)
            return value

        return facts

    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        now = snapshot.now_s
        aged_before = now - self.config.max_wait_s
        tau = self.config.tau_s
        boost = self.config.boost_s
        seen, estimates = self._pass
        if seen is not snapshot:
            estimates = _NONE
        # Sorted by submit time first, so that the stable sorts below break
        # ties by submit time; one float key per job keeps the sorts in C.
        jobs = sorted(jobs, key=_SUBMIT)
        aged = [job for job in jobs if job.submit_s <= aged_before]
        if aged:
            jobs = [job for job in jobs if job.submit_s > aged_before]
        log2 = _LOG2
        if estimates:
            ests = [estimates.get(job.id, job.est_runtime_s) for job in jobs]
        else:
            ests = [job.est_runtime_s for job in jobs]
        keys = [
            (job.submit_s - now - boost)
            / ((log2.get(job.procs) or _log2(job.procs)) * (est if est > tau else tau))
            for job, est in zip(jobs, ests, strict=True)
        ]
        ranked = sorted(range(len(jobs)), key=keys.__getitem__)
        return aged + [jobs[i] for i in ranked]

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
        # shortest planned runtime first, ties by submit time (two stable sorts in C)
        return sorted(sorted(candidates, key=_SUBMIT), key=_ESTIMATE)


_SUBMIT = attrgetter("submit_s")
_ESTIMATE = attrgetter("est_runtime_s")
_LOG2: dict[int, float] = {}


def _log2(procs: int) -> float:
    """log2(procs + 1), remembered per width (the priority's size factor)."""
    value = _LOG2[procs] = math.log2(procs + 1)
    return value


def _by_submit(job: QueuedJob) -> tuple[float, str]:
    return (job.submit_s, str(job.id))


def _predicted_queue(
    queued: Sequence[QueuedJob], facts: Callable[[str], _OwnerFacts]
) -> tuple[QueuedJob, ...]:
    """The queue with each job's hold replaced by its prediction where that is shorter."""
    known: dict[str, _OwnerFacts] = {}
    out: list[QueuedJob] = []
    append = out.append
    for job in queued:
        owner = job.owner
        if owner in known:
            mean_s, by_request = known[owner]
        else:
            mean_s, by_request = known[owner] = facts(owner)
        requested = job.est_runtime_s
        if by_request and requested in by_request:
            mean_s = by_request[requested]
        if mean_s is None or mean_s >= requested:
            append(job)
            continue
        est = predict(mean_s, requested)
        append(
            QueuedJob(
                job.id,
                owner,
                job.submit_s,
                job.procs,
                est,
                job.nodes,
                job.priority,
                job.allowed_pools,
            )
        )
    return tuple(out)


def _predicted_running(job: RunningJob, facts: _OwnerFacts, now_s: float) -> RunningJob:
    """A running job's end on the same prediction as when queued, corrected once outlived."""
    mean_s, by_request = facts
    requested = job.est_runtime_s
    if requested in by_request:
        mean_s = by_request[requested]
    est = correct(predict(mean_s, requested), now_s - job.start_s, requested)
    if est == requested:
        return job
    return RunningJob(job.id, job.owner, job.pool, job.procs, job.start_s, est)
