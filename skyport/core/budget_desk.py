"""The Core's budget desk: budgets set and read, the planner's admission, cost reports.

It reads the job store and the gates' flavors and leaves every decision to
the pure ``skyport.core.budgets``.  The Core service asks it, each planning
pass, which queued jobs may be planned (``admit``: the others wait with the
reason ``Budget``, or end when they never can fit), and before taking a job
in whether its budget could ever hold it (``check_submit``).  Budgets are
rows of the job store (table ``budgets``), so they live and die with the
jobs they account for; spending is always computed again from the jobs'
events, never kept as a running total that a crash could lose.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Literal

from skyport.core.budgets import (
    PERIODS,
    Budget,
    Standing,
    commitment,
    cost_rows,
    job_cost,
    never_fits,
    node_price,
    period_end,
    period_start,
    standing,
    worst_case,
)
from skyport.errors import ConflictError, PermissionDeniedError, ValidationError
from skyport.gate import Flavor
from skyport.models import Job, JobSpec, JobState
from skyport.pki import USERNAME_PATTERN, Identity
from skyport.protocol import MAX_BUDGET
from skyport.store import JobStore

__all__ = ["BudgetDesk"]

log = logging.getLogger("skyport.core")
S = JobState
_LIVE = [s for s in S if not s.is_terminal() and s != S.QUEUED]
_USER_RE = re.compile(USERNAME_PATTERN)
_LAST = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class BudgetDesk:
    def __init__(self, store: JobStore, gates: Mapping[str, Any],
                 replan: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.gates = gates
        self.replan = replan
        self.waiting: dict[str, str] = {}  # job id -> why it waits, from the last pass
        self._flavors: dict[str, list[Flavor]] = {}  # the last each gate said
        self._new_period: asyncio.TimerHandle | None = None

    async def flavors(self) -> dict[str, list[Flavor]]:
        """Every gate's flavors; a gate that does not answer keeps what it said last."""
        for name, gate in self.gates.items():
            try:
                self._flavors[name] = list(await gate.flavors())
            except Exception as exc:  # noqa: BLE001 - a sick gate: its last prices stand
                log.warning("budgets: gate %s did not list its flavors: %s", name, exc)
        return self._flavors

    def budget(self, owner: str) -> Budget | None:
        row = self.store.budgets().get(owner)
        return None if row is None else _budget(row)

    def _spent(self, owner: str, since: float | None, now: float) -> float:
        return sum(job_cost(j, since, now)
                   for j in self.store.ran(owner=owner, since=_when(since)))

    def standing(self, budget: Budget, now: float, flavors: Mapping[str, Sequence[Flavor]],
                 queued: Sequence[Job] | None = None) -> Standing:
        """``budget``'s owner now; ``queued``: the jobs to admit (default: the unheld ones)."""
        owner = budget.owner
        since = period_start(budget.period, now)
        live = [(j, commitment(j, node_price(j.spec, flavors), now))
                for j in self.store.list(owner=owner, states=_LIVE)]
        if queued is None:
            queued = [j for j in self.store.list(owner=owner, states=[S.QUEUED]) if not j.held]
        ask = [(j, worst_case(j.spec, node_price(j.spec, flavors))) for j in queued]
        return standing(budget, self._spent(owner, since, now), live, ask, since)

    # -- the Core's questions ---------------------------------------------------------

    async def admit(self, queued: list[Job], now: float
                    ) -> tuple[list[Job], list[tuple[str, str]]]:
        """The queued jobs that may be planned, and (job id, why) of those that never can.

        Held jobs are not in ``queued``: they commit nothing until released.
        """
        budgets = self.store.budgets()
        owners = sorted({j.owner for j in queued} & budgets.keys())
        waiting: dict[str, str] = {}
        never: list[tuple[str, str]] = []
        ends: list[float] = []
        if owners:
            flavors = await self.flavors()
            for owner in owners:
                budget = _budget(budgets[owner])
                st = self.standing(budget, now, flavors, [j for j in queued if j.owner == owner])
                waiting.update(st.waiting)
                never += st.never.items()
                end = period_end(budget.period, now)
                if st.waiting and end is not None:
                    ends.append(end)
        self.waiting = waiting
        self._plan_again_at(min(ends, default=None), now)
        out = waiting.keys() | {job_id for job_id, _ in never}
        return [j for j in queued if j.id not in out], never

    def _plan_again_at(self, when: float | None, now: float) -> None:
        """Nothing in the store changes when a new period begins: plan again then."""
        if self._new_period is not None:
            self._new_period.cancel()
            self._new_period = None
        if when is not None:
            self._new_period = asyncio.get_running_loop().call_later(
                max(0.0, when - now) + 1.0, self.replan)

    async def check_submit(self, owner: str, spec: JobSpec) -> None:
        """ConflictError when the owner's budget can never hold the job."""
        budget = self.budget(owner)
        if budget is None:
            return
        now = time.time()
        worst = worst_case(spec, node_price(spec, await self.flavors()))
        spent = self._spent(owner, None, now) if budget.period == "total" else 0.0
        why = never_fits(budget, spent, worst)
        if why is not None:
            raise ConflictError(f"over budget: {why}; an admin can raise it "
                                f"('skyport budget set {owner} AMOUNT')")

    # -- user calls -----------------------------------------------------------------------

    async def set_budget(self, who: Identity, user: str, limit: float,
                         period: str) -> dict[str, Any]:
        if not who.is_admin:
            raise PermissionDeniedError("only an admin may set a budget")
        _check_user(user)
        if isinstance(limit, bool) or not isinstance(limit, int | float) \
                or not math.isfinite(limit) or not 0 <= limit <= MAX_BUDGET:
            raise ValidationError("limit", limit, f"a finite amount from 0 to {MAX_BUDGET:g}")
        if period not in PERIODS:
            raise ValidationError("period", period, "one of: " + ", ".join(PERIODS))
        self.store.set_budget(user, float(limit), period, who.username, time.time())
        self.replan()  # a raised limit lets waiting jobs in; a lowered one may end some
        return await self.budget_view(who, user)

    async def budget_view(self, who: Identity, user: str | None = None) -> dict[str, Any]:
        """A user's budget now: limit, period, spent, committed, remaining, who waits."""
        user = _visible_user(who, user, "budget")
        now = time.time()
        budget = self.budget(user)
        flavors = await self.flavors()
        if budget is None:  # no limit: what this month cost, and what is in flight
            st = self.standing(Budget(user, math.inf, "month"), now, flavors)
            return {"user": user, "since": _when(st.since), "spent": st.spent,
                    "committed": st.committed}
        st = self.standing(budget, now, flavors)
        return {"user": user, "limit": budget.limit, "period": budget.period,
                "since": _when(st.since), "spent": st.spent, "committed": st.committed,
                "remaining": st.remaining, "waiting": sorted(st.waiting),
                "set_by": budget.set_by, "set_at": _when(budget.set_at)}

    async def cost_report(self, who: Identity, user: str | None, since: str | None,
                   by: Literal["gate", "user", "day"]) -> dict[str, Any]:
        """What clusters cost while jobs ran since ``since`` (default: this month's 1st)."""
        if user is None and not who.is_admin:
            user = who.username  # a user's report is their own
        if user is not None:
            user = _visible_user(who, user, "cost report")
        now = time.time()
        start = _parse_since(since) if since else period_start("month", now)
        rows = cost_rows(self.store.ran(owner=user, since=_when(start)), start, now, by)
        return {"by": by, "user": user, "since": _when(start), "until": _when(now),
                "rows": [r.__dict__ for r in rows], "total": sum(r.cost for r in rows)}


def _budget(row: Mapping[str, Any]) -> Budget:
    return Budget(row["owner"], row["amount"], row["period"], row["set_by"], row["set_at"])


def _check_user(user: str) -> None:
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise ValidationError("user", user, f"a user name matching {USERNAME_PATTERN}")


def _visible_user(who: Identity, user: str | None, what: str) -> str:
    if user is None or user == who.username:
        return who.username
    if not who.is_admin:
        raise PermissionDeniedError(f"only an admin may see another user's {what}")
    _check_user(user)
    return user


def _parse_since(text: str) -> float:
    """A date (``2026-12-01``, midnight UTC) or an ISO time (UTC unless it says)."""
    allowed = ("a date (YYYY-MM-DD) or an ISO time (YYYY-MM-DDTHH:MM[:SS][+HH:MM]) "
               "from 1970 to 9998")
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            t = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            t = datetime.fromisoformat(text)
            t = t if t.tzinfo else t.replace(tzinfo=UTC)
        when = t.timestamp()
    except (ValueError, OverflowError):
        raise ValidationError("since", text[:64], allowed) from None
    if not 0 <= when < _LAST:  # every time shown back must be a datetime again
        raise ValidationError("since", text[:64], allowed)
    return when
