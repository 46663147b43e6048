"""The Scheduler: turns the Core's snapshot of jobs and gates into a timetable.

The timetable engine behind it is pure (``skyport.timetable``); this module
chooses the policy, keeps the fair-share usage ledger and the owners' runtime
history between passes and reduces the engine's timetable to what the Core
acts on.  The Ray actor (``skyport.core.actor.SchedulerActor``) is a thin
shell around it.

The runtime history (each owner's last few ended jobs: how long they ran,
what they asked for) feeds policies that plan with predicted runtimes
(``sky``). With a state directory it is kept in ``HISTORY_FILE`` there,
rewritten atomically whenever a job ends and read back at start, so a
restarted Scheduler predicts as well as the one before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from skyport.timetable import Capability, Snapshot, UsageLedger, load_policy, plan
from skyport.timetable.predict import RuntimeHistory
from skyport.timetable.reasons import wait_reasons

log = logging.getLogger(__name__)

HISTORY_FILE = "scheduler-history.json"

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
    predicted: bool = False
    """``start_s`` was planned with predicted runtimes (an estimate, not a promise)."""


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
    """What a finished job used: processor-seconds for fair share, its runtime for predictions."""

    owner: str
    proc_s: float
    at_s: float
    runtime_s: float | None = None
    """Seconds it ran; None leaves it out of the runtime history."""
    requested_s: float | None = None
    """Its time limit in seconds."""


class SchedulerService:
    def __init__(
        self,
        policy: str = "fcfs",
        policy_config: dict[str, Any] | None = None,
        usage_half_life_s: float = 7 * 86_400.0,
        state_dir: Path | str | None = None,
    ) -> None:
        self.policy = load_policy(policy, **(policy_config or {}))
        self.policy_name = policy
        self.ledger = UsageLedger(half_life_s=usage_half_life_s)
        self.history_path = Path(state_dir) / HISTORY_FILE if state_dir is not None else None
        self.history = self._load_history()
        self._predicts = Capability.PREDICTS in self.policy.capabilities
        self._needs_history = Capability.NEEDS_HISTORY in self.policy.capabilities

    def _load_history(self) -> RuntimeHistory:
        if self.history_path is None:
            return RuntimeHistory()
        try:
            return RuntimeHistory.load(self.history_path)
        except (OSError, ValueError, TypeError) as exc:
            # a damaged file costs predictions (requested times are used), never the Scheduler
            log.warning("runtime history %s unreadable, starting empty: %s", self.history_path, exc)
            return RuntimeHistory()

    def charge(self, charges: Iterable[UsageCharge]) -> None:
        recorded = False
        for c in charges:
            self.ledger.charge(c.owner, c.proc_s, c.at_s)
            if c.runtime_s is not None and c.requested_s is not None:
                self.history.record(c.owner, c.runtime_s, c.requested_s)
                recorded = True
        if recorded and self.history_path is not None:
            self.history.save(self.history_path)

    def plan(self, snapshot: Snapshot, charges: Iterable[UsageCharge] = ()) -> SchedulePlan:
        """The plan, and why each queued job that does not start now waits."""
        self.charge(charges)
        owners = {j.owner for j in snapshot.queued}
        snapshot = replace(
            snapshot,
            usage=self.ledger.at(snapshot.now_s, owners),
            history=self.history.view() if self._needs_history else snapshot.history,
        )
        table = plan(snapshot, self.policy)
        now = {p.job_id for p in table.to_start_now}
        predicted = self._predicts
        placements = (
            table.entries
            if len(snapshot.queued) <= PROJECT_UP_TO
            else table.starts + table.reserved
        )
        entries = [
            PlanEntry(
                str(p.job_id),
                p.start_s,
                p.pool,
                p.procs,
                p.nodes,
                p.job_id in now,
                predicted and p.job_id not in now,
            )
            for p in placements
        ]
        reasons = wait_reasons(snapshot, table, placements)
        return SchedulePlan(entries, [Waiting(str(k), r.code, r.detail)
                                      for k, r in reasons.items()])
