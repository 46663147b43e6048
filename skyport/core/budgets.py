"""Budgets and spending, pure: periods, what a job cost, what it may still cost, who waits.

No I/O and no clock: jobs (with their events), flavors and ``now`` come in;
numbers and decisions go out.  ``skyport.core.budget_desk`` reads the store
and the gates and hands them here, for the planner (which jobs may be
planned), the machine (which jobs can never fit) and the terminals
(``skyport budget``, ``skyport cost``).

* **Spent** is what clusters cost while their payloads ran: each RUNNING
  stretch of each attempt (from the job's events, so a control-plane
  restart loses nothing) x the cluster's price per hour (``Job.price_per_hour``,
  nodes x the flavor's price, as its gate priced it).
* **Committed** is what live jobs may still cost: a queued job's worst case
  (nodes x the dearest node-hour it could be given x its time limit), a job
  on a cluster its worst case at its real price, less what this attempt has
  run so far.
* A queued job waits (reason ``Budget``) while spent + committed + its worst
  case would pass the limit; the owner's jobs are admitted in submission
  order, so a large job is not starved by small ones behind it.  A job
  whose worst case can never fit (over the whole limit; under a ``total``
  budget, over what is left of it) is refused at submit and ended if the
  limit is lowered under it.
* Periods are calendar periods in UTC: ``month`` (from the 1st, 00:00),
  ``week`` (from Monday, 00:00), ``total`` (ever).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from skyport.gate import Flavor
from skyport.models import Job, JobSpec, JobState

__all__ = [
    "BUDGET", "PERIODS", "Budget", "CostRow", "Standing", "commitment", "cost_rows",
    "job_cost", "money", "never_fits", "node_price", "period_end",
    "period_start", "running_spans",
    "standing", "worst_case",
]

Period = Literal["month", "week", "total"]
PERIODS: tuple[Period, ...] = ("month", "week", "total")
BUDGET = "Budget"  # the wait reason's code
_EPS = 1e-9  # a job that fits to the last rounding error fits
_WORDS = {"month": "this month", "week": "this week", "total": "in total"}
S = JobState


@dataclass(frozen=True)
class Budget:
    """What ``owner`` may spend per ``period``; set by an admin."""

    owner: str
    limit: float
    period: Period
    set_by: str = ""
    set_at: float = 0.0


def money(amount: float) -> str:
    return f"{amount:.2f}"


def period_start(period: str, now: float) -> float | None:
    """When the calendar period holding ``now`` began (UTC); None for ``total``."""
    t = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        return t.replace(day=1).timestamp()
    if period == "week":
        return (t - timedelta(days=t.weekday())).timestamp()
    if period == "total":
        return None
    raise ValueError(f"period {period!r}: one of {', '.join(PERIODS)}")


def period_end(period: str, now: float) -> float | None:
    """When the calendar period holding ``now`` ends (UTC); None for ``total``."""
    start = period_start(period, now)
    if start is None:
        return None
    t = datetime.fromtimestamp(start, UTC)
    if period == "week":
        return (t + timedelta(days=7)).timestamp()
    return (t.replace(year=t.year + 1, month=1) if t.month == 12
            else t.replace(month=t.month + 1)).timestamp()


# -- what ran, and what it cost --------------------------------------------------------


def running_spans(job: Job, now: float) -> list[tuple[float, float]]:
    """(start, end) in epoch seconds of each attempt's RUNNING stretch; the open one ends now.

    A later event in the same state (a note) does not restart the stretch.
    """
    spans: list[tuple[float, float]] = []
    begin: float | None = None
    for e in job.events:
        t = e.time.timestamp()
        if e.state == S.RUNNING:
            begin = t if begin is None else begin
        elif begin is not None:
            spans.append((begin, max(begin, t)))
            begin = None
    if begin is not None:
        spans.append((begin, max(begin, now)))
    return spans


def _clip(spans: Iterable[tuple[float, float]], since: float | None,
          until: float) -> list[tuple[float, float]]:
    low = -math.inf if since is None else since
    return [(max(a, low), min(b, until)) for a, b in spans if min(b, until) > max(a, low)]


def job_cost(job: Job, since: float | None, now: float) -> float:
    """What ``job``'s clusters cost while it ran, from ``since`` (None: ever) to ``now``."""
    if not job.price_per_hour:
        return 0.0
    seconds = sum(b - a for a, b in _clip(running_spans(job, now), since, now))
    return job.price_per_hour * seconds / 3600


@dataclass(frozen=True)
class CostRow:
    """One line of a cost report: a gate, a user or a UTC day."""

    key: str
    cost: float
    node_hours: float
    jobs: int


def cost_rows(jobs: Iterable[Job], since: float | None, now: float,
              by: Literal["gate", "user", "day"]) -> list[CostRow]:
    """What ``jobs`` cost from ``since`` to ``now``, grouped ``by``: largest first, days
    in order."""
    cost: dict[str, float] = {}
    hours: dict[str, float] = {}
    seen: dict[str, set[str]] = {}
    for job in jobs:
        for a, b in _clip(running_spans(job, now), since, now):
            for key, lo, hi in _pieces(job, a, b, by):
                seconds = hi - lo
                cost[key] = cost.get(key, 0.0) + (job.price_per_hour or 0.0) * seconds / 3600
                hours[key] = hours.get(key, 0.0) + job.nodes * seconds / 3600
                seen.setdefault(key, set()).add(job.id)
    rows = [CostRow(k, cost[k], hours[k], len(seen[k])) for k in cost]
    if by == "day":
        return sorted(rows, key=lambda r: r.key)
    return sorted(rows, key=lambda r: (-r.cost, r.key))


def _pieces(job: Job, a: float, b: float, by: str) -> list[tuple[str, float, float]]:
    if by == "gate":
        return [(job.gate or "-", a, b)]
    if by == "user":
        return [(job.owner, a, b)]
    out = []
    while a < b:  # a stretch over midnight counts on both days
        day = datetime.fromtimestamp(a, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        end = min(b, (day + timedelta(days=1)).timestamp())
        out.append((day.date().isoformat(), a, end))
        a = end
    return out


# -- what a job may still cost ---------------------------------------------------------


def _holds(f: Flavor, spec: JobSpec) -> bool:
    r = spec.resources
    return ((spec.flavor is None or f.name == spec.flavor) and f.cpus >= r.cpus_per_node
            and f.gpus >= r.gpus_per_node and (r.mem_mb is None or f.mem_mb >= r.mem_mb)
            and f.max_nodes >= r.nodes)


def node_price(spec: JobSpec, flavors: Mapping[str, Sequence[Flavor]]) -> float:
    """The dearest node-hour the job could be given: the most expensive flavor of any gate
    that could hold it, or its ``--max-price`` when that is lower."""
    gates = [spec.gate] if spec.gate else list(flavors)
    top = max((f.price_per_hour for g in gates for f in flavors.get(g, ())
               if _holds(f, spec)), default=0.0)
    cap = spec.max_price_per_hour
    return min(top, cap) if cap is not None else top


def worst_case(spec: JobSpec, price_per_node_hour: float) -> float:
    """nodes x price per node-hour x time limit in hours."""
    r = spec.resources
    return r.nodes * price_per_node_hour * r.time_limit_s / 3600


def commitment(job: Job, price_per_node_hour: float, now: float) -> float:
    """What a live job may still cost: its worst case, less what this attempt has run.

    A job on a cluster is priced as its gate priced the cluster; one whose
    payload is done (STAGING_OUT) costs nothing more.
    """
    if job.state.is_terminal() or job.state == S.STAGING_OUT:
        return 0.0
    full = worst_case(job.spec, price_per_node_hour)
    if job.state.has_cluster() and job.price_per_hour is not None:
        full = job.price_per_hour * job.spec.resources.time_limit_s / 3600
        if job.state == S.RUNNING and job.started_at is not None:
            ran_h = max(0.0, now - job.started_at.timestamp()) / 3600
            return max(0.0, full - job.price_per_hour * ran_h)
    return full


# -- one user's standing -----------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """One budget now: spent this period, committed, and the decision for each queued job."""

    budget: Budget
    since: float | None  # the period's start (None: ``total``)
    spent: float
    committed: float  # live jobs' and admitted queued jobs' worst cases
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> why it waits
    never: dict[str, str] = field(default_factory=dict)  # job id -> why it can never fit

    @property
    def remaining(self) -> float:
        return self.budget.limit - self.spent - self.committed


def never_fits(budget: Budget, spent: float, worst: float) -> str | None:
    """Why a job of this worst case can never run under ``budget``; None when it can.

    A monthly or weekly budget starts again each period, so only the whole
    limit counts; under a ``total`` budget what is spent stays spent.
    """
    room = budget.limit - spent if budget.period == "total" else budget.limit
    if worst <= room + _EPS:
        return None
    if budget.period == "total":
        return (f"its worst case {money(worst)} is more than the {money(max(room, 0.0))} left "
                f"of {budget.owner}'s total budget of {money(budget.limit)}")
    return (f"its worst case {money(worst)} is more than {budget.owner}'s whole budget of "
            f"{money(budget.limit)} per {budget.period}")


def standing(budget: Budget, spent: float, live: Sequence[tuple[Job, float]],
             queued: Sequence[tuple[Job, float]], since: float | None) -> Standing:
    """Admit ``queued`` (job, worst case), in the order given, while the budget holds them.

    ``live``: (job, commitment) of the owner's jobs that are past the queue.
    The first job that does not fit waits, and so does every job behind it.
    """
    committed = sum(c for _, c in live)
    waiting: dict[str, str] = {}
    never: dict[str, str] = {}
    first: str | None = None
    words = _WORDS[budget.period]
    for job, worst in queued:
        why = never_fits(budget, spent, worst)
        if why is not None:
            never[job.id] = why
            continue
        left = budget.limit - spent - committed
        if first is None and worst <= left + _EPS:
            committed += worst
            continue
        detail = (f"needs {money(worst)}, {money(max(left, 0.0))} of {money(budget.limit)} "
                  f"left {words}")
        if first is not None:
            detail += f"; behind job {first}"
        waiting[job.id] = detail
        first = first or job.id
    return Standing(budget, since, spent, committed, waiting, never)
