"""Read-only views of the Core for terminals: status, gates, timetable, clusters.

These read the store, the last plan and the gates, and change nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from skyport.core.placement import estimated_cost, job_flavor
from skyport.errors import NotFoundError
from skyport.gate import Flavor
from skyport.models import Job
from skyport.models import JobState as S
from skyport.pki import Identity
from skyport.scheduler import PlanEntry
from skyport.storage import JobStorage
from skyport.store import JobStore

log = logging.getLogger("skyport.core")


class CoreViews:
    def __init__(self, store: JobStore, storage: JobStorage, gates: Mapping[str, Any],
                 plan: Callable[[], dict[str, PlanEntry]], policy_name: str,
                 started_at: datetime, stats: Callable[[], dict[str, Any]],
                 reason: Callable[[Job], tuple[str, str] | None] = lambda job: None) -> None:
        self.store = store
        self.storage = storage
        self.gates = gates
        self._plan = plan
        self.policy_name = policy_name
        self.started_at = started_at
        self._stats = stats
        self._reason = reason

    async def status(self, who: Identity | None = None) -> dict[str, Any]:
        """Job counts by state: a user's own jobs (an admin's: everyone's), and gates."""
        owner = None if who is None or who.is_admin else who.username
        # counted by the store: reading every job (10,000 of them) took most of a second
        counts = {s.value: n for s, n in self.store.counts_by_state(owner).items()}
        return {
            "policy": self.policy_name,
            "started_at": self.started_at.isoformat(),
            "storage_url": self.storage.url,
            "counts": counts,
            **self._stats(),
            "gates": await self.gate_info(),
        }

    async def gate_info(self) -> list[dict[str, Any]]:
        out = []
        for name, gate in sorted(self.gates.items()):
            try:
                flavors = [f.__dict__ for f in await gate.flavors()]
                cap = (await gate.capacity()).__dict__
                clusters = len(await gate.list_clusters())
                out.append(
                    {
                        "name": name,
                        "type": await _type_name(gate),
                        "flavors": flavors,
                        "capacity": cap,
                        "clusters": clusters,
                        "healthy": True,
                    }
                )
            except Exception as exc:  # a sick gate is reported, not fatal
                out.append({"name": name, "type": await _type_name(gate), "healthy": False,
                            "error": str(exc)})
        return out

    async def timetable(self, who: Identity | None = None) -> dict[str, Any]:
        """The plan; a user sees other users' jobs only as anonymous busy capacity.

        ``who=None`` (the Core itself, tests of the plan) sees everything.
        """
        now = time.time()
        entries = []
        planned = self._plan()
        offered: dict[str, list[Flavor] | None] = {}
        for job in self.store.list(states=[s for s in S if not s.is_terminal()]):
            limit = job.spec.resources.time_limit_s
            flavor: str | None = None
            cost: float | None = None
            if job.state == S.QUEUED:
                plan = planned.get(job.id)
                if plan is None or job.held:  # a held job is out of the plan at once
                    continue
                start, gate = plan.start_s, plan.pool or None
            else:
                start = (job.started_at or job.submitted_at).timestamp()
                gate = job.gate
                flavor = job.flavor
                if job.price_per_hour is not None:  # the whole cluster's price
                    cost = job.price_per_hour * limit / 3600.0
            if flavor is None and gate is not None:  # queued, or its cluster not made yet
                if gate not in offered:
                    offered[gate] = await self._flavors(gate)
                f = job_flavor(job.spec, offered[gate] or [])
                if f is not None:
                    flavor = f.name
                    if cost is None:
                        cost = estimated_cost(job.spec, f.price_per_hour)
            own = who is None or who.is_admin or job.owner == who.username
            entries.append(
                {
                    # another user's job: its shape and times only (no id, name, owner)
                    "job_id": job.id if own else "",
                    "name": job.spec.name if own else "",
                    "owner": job.owner if own else "",
                    "state": job.state.value,
                    "start": start,
                    "end": start + limit,
                    "gate": gate,
                    "nodes": job.spec.resources.nodes,
                    "procs": job.spec.total_cpus,
                    "reason": (self._reason(job) or (None,))[0] if own else None,
                    "flavor": flavor,
                    "est_cost": cost if own else None,
                    "prefer": job.spec.prefer if own else None,
                    "deadline": job.spec.deadline if own else None,
                }
            )
        return {"now": now, "policy": self.policy_name, "entries": entries}

    async def _flavors(self, gate: str) -> list[Flavor] | None:
        try:
            return list(await self.gates[gate].flavors())
        except Exception as exc:  # a sick gate: no flavor or cost shown
            log.warning("gate %s did not list its flavors: %s", gate, exc)
            return None

    async def clusters(self, who: Identity) -> list[dict[str, Any]]:
        """Every gate's clusters (a user sees those of their own jobs) with cost so far."""
        out = []
        now = time.time()
        for name, gate in sorted(self.gates.items()):
            try:
                infos = await gate.list_clusters()
            except Exception as exc:
                log.warning("gate %s cannot list clusters: %s", name, exc)
                continue
            for info in infos:
                try:
                    job: Job | None = self.store.get(info.job_id, events=False)
                except NotFoundError:
                    job = None
                if not who.is_admin and (job is None or job.owner != who.username):
                    continue
                age_s = max(0.0, now - info.created_at) if info.created_at else 0.0
                out.append(
                    {
                        "cluster_id": info.cluster_id,
                        "gate": name,
                        "job_id": info.job_id,
                        "owner": job.owner if job else None,
                        "job_state": job.state.value if job else None,
                        "state": info.state,
                        "flavor": info.flavor,
                        "nodes": len(info.nodes),
                        "age_s": age_s,
                        "price_per_hour": info.price_per_hour,
                        "cost": info.price_per_hour * age_s / 3600,
                        "reason": info.reason,
                    }
                )
        return out


async def _type_name(gate: object) -> str:
    """The gate's plugin type (``GateActor.type_name``); "" for a port that cannot say."""
    ask = getattr(gate, "type_name", None)
    if ask is None:
        return ""
    try:
        return str(await ask())
    except Exception as exc:  # noqa: BLE001 - a sick gate is reported, not fatal
        log.warning("cannot read a gate's type: %s", exc)
        return ""
