"""The Scheduler: turns the Core's snapshot of jobs and gates into a timetable.

The timetable engine behind it is pure (``skyport.timetable``); this module
chooses the policy, keeps the fair-share usage ledger between passes and
reduces the engine's timetable to what the Core acts on.  The Ray actor
(``skyport.core.actor.SchedulerActor``) is a thin shell around it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from skyport.timetable import Snapshot, UsageLedger, load_policy, plan
from skyport.timetable.reasons import wait_reasons

# Past this many queued jobs only the starts and the head's reservation are
# computed each pass; the projected start of every other job costs more than
# it is worth at the Core's re-planning rate.
PROJECT_UP_TO = 2000


@dataclass(frozen=True)
class PlanEntry:
    job_id: str
    start_s: float
    pool: str
    procs: int
    nodes: int
    start_now: bool


@dataclass(frozen=True)
class Waiting:
    """Why a queued job does not start now (``skyport.timetable.reasons``)."""

    job_id: str
    code: str
    detail: str


@dataclass(frozen=True)
class SchedulePlan:
    """One pass's answer: planned starts, and a reason for every job that waits."""

    entries: list[PlanEntry]
    waiting: list[Waiting] = field(default_factory=list)


@dataclass(frozen=True)
class UsageCharge:
    """Processor-seconds a finished job used, for fair share."""

    owner: str
    proc_s: float
    at_s: float


class SchedulerService:
    def __init__(
        self,
        policy: str = "fcfs",
        policy_config: dict[str, Any] | None = None,
        usage_half_life_s: float = 7 * 86_400.0,
    ) -> None:
        self.policy = load_policy(policy, **(policy_config or {}))
        self.policy_name = policy
        self.ledger = UsageLedger(half_life_s=usage_half_life_s)

    def charge(self, charges: Iterable[UsageCharge]) -> None:
        for c in charges:
            self.ledger.charge(c.owner, c.proc_s, c.at_s)

    def plan(self, snapshot: Snapshot, charges: Iterable[UsageCharge] = ()) -> SchedulePlan:
        """The plan, and why each queued job that does not start now waits."""
        self.charge(charges)
        owners = {j.owner for j in snapshot.queued}
        snapshot = replace(snapshot, usage=self.ledger.at(snapshot.now_s, owners))
        table = plan(snapshot, self.policy)
        now = {p.job_id for p in table.to_start_now}
        placements = (
            table.entries
            if len(snapshot.queued) <= PROJECT_UP_TO
            else table.starts + table.reserved
        )
        entries = [
            PlanEntry(str(p.job_id), p.start_s, p.pool, p.procs, p.nodes, p.job_id in now)
            for p in placements
        ]
        reasons = wait_reasons(snapshot, table, placements)
        return SchedulePlan(entries, [Waiting(str(k), r.code, r.detail)
                                      for k, r in reasons.items()])
