"""Price and deadline: what a job would cost on each gate, and whether any placement suits it.

Pure functions over a job's spec and the gates' flavors (no I/O): the intake
refuses a job that no gate could run within its price cap and deadline, the
planner hands the engine each constrained job's own price per node-hour on
each gate, and the timetable shows the flavor and estimated cost.

A gate gives a job the cheapest of its flavors that holds one node of the job
(``Gate.pick_flavor``); that flavor's ``price_per_hour`` (per node-hour) is the
job's price there, compared with ``--max-price``. A deadline is for the job's
*end*: start + the flavor's boot time + the time limit must not pass it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from skyport.errors import ValidationError
from skyport.gate import Flavor, cheapest_flavor
from skyport.models import JobSpec
from skyport.units import deadline_at

MAX_AHEAD_S = 366 * 86400  # as far as a time limit may reach

__all__ = ["MAX_AHEAD_S", "checked_for_placement", "estimated_cost", "job_flavor", "node_prices"]


def job_flavor(spec: JobSpec, flavors: Sequence[Flavor]) -> Flavor | None:
    """The flavor a gate offering ``flavors`` would give this job; None when none fits."""
    r = spec.resources
    return cheapest_flavor(flavors, r.cpus_per_node, r.gpus_per_node, r.mem_mb, r.nodes,
                           spec.flavor)


def node_prices(spec: JobSpec,
                flavors: Mapping[str, Sequence[Flavor]]) -> tuple[tuple[str, float], ...]:
    """``(gate, price per node-hour)`` of the job's own flavor on each gate where one fits."""
    out = []
    for gate, offered in sorted(flavors.items()):
        f = job_flavor(spec, offered)
        if f is not None:
            out.append((gate, f.price_per_hour))
    return tuple(out)


def estimated_cost(spec: JobSpec, price_per_node_hour: float) -> float:
    """Nodes x price per node-hour x the time limit in hours."""
    return spec.resources.nodes * price_per_node_hour * spec.resources.time_limit_s / 3600.0


def checked_for_placement(spec: JobSpec, now_s: float,
                          flavors: Mapping[str, Sequence[Flavor]]) -> JobSpec:
    """The spec with its deadline made absolute, or ValidationError if no gate suits it.

    ``flavors``: the flavors of every gate that can ever hold the job. Refused:
    a deadline not in the future; a price cap under every fitting flavor; a
    deadline that even the fastest gate within the cap would miss, were the
    job to start now (its boot time plus the time limit).
    """
    if spec.deadline is not None:
        at = deadline_at(spec.deadline, now_s)
        if at <= now_s:
            raise ValidationError("deadline", spec.deadline,
                                  f"a time in the future; it is now {_iso(now_s)}")
        if at > now_s + MAX_AHEAD_S:
            raise ValidationError("deadline", spec.deadline,
                                  f"at most 366 days ahead, by {_iso(now_s + MAX_AHEAD_S)}")
        spec = spec.model_copy(update={"deadline": _iso(at)})
    if spec.max_price_per_hour is None and spec.deadline is None:
        return spec
    offers = [(gate, f) for gate, offered in sorted(flavors.items())
              if (f := job_flavor(spec, offered)) is not None]
    if not offers:
        return spec  # the fit itself is refused elsewhere, with its own reason
    cap = spec.max_price_per_hour
    if cap is not None:
        within = [(g, f) for g, f in offers if f.price_per_hour <= cap]
        if not within:
            gate, f = min(offers, key=lambda o: o[1].price_per_hour)
            raise ValidationError(
                "max_price_per_hour", cap,
                f"at least {f.price_per_hour:g} per node-hour: the cheapest flavor that fits "
                f"is {f.name} on gate {gate} at {f.price_per_hour:g}")
        offers = within
    if spec.deadline is not None:
        at = datetime.fromisoformat(spec.deadline).timestamp()
        limit = spec.resources.time_limit_s
        gate, f = min(offers, key=lambda o: o[1].boot_s)
        if now_s + f.boot_s + limit > at:
            within_cap = " within --max-price" if cap is not None else ""
            raise ValidationError(
                "deadline", spec.deadline,
                f"at or after {_iso(now_s + f.boot_s + limit)}: the fastest gate{within_cap}, "
                f"{gate}, needs {f.boot_s:g} s to boot plus the time limit {limit} s")
    return spec


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(round(epoch_s), UTC).isoformat()
