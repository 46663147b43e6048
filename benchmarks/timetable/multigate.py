"""Multi-gate mode: a trace replayed over pools of different prices and boot times.

The same ``skyport.timetable.plan()`` the Scheduler calls, on several pools
(``--pools name:capacity:price:boot_s,...``; the price is per processor-hour,
as ``Pool.price_per_hour``). Every job gets the placement options a user
would give (``--prefer``, and a deadline ``--slack`` times its requested time
after its submission, plus the fastest pool's boot time), and the replay does
what the product does:

* a job starts on the pool the engine chose; it holds its processors for
  boot + its logged runtime (it is planned on boot + its requested time);
* a job the engine finds unplaceable (its deadline can no longer be met on
  any pool) is ended then, as the Core ends it, and counted as ``cancelled``;
* wait = time from submission until the job runs (its planned start + the
  pool's boot time); cost = processors x price x (boot + runtime) in hours
  (a cloud bills from the moment it starts booting).

``--baseline`` replays the same trace on the fastest pool alone, with
neither a preference nor a deadline: the comparison the RESULTS table makes.
"""

from __future__ import annotations

import heapq
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.timetable.metrics import BSLD_TAU_S
from benchmarks.timetable.swf import Trace, TraceJob
from benchmarks.timetable.windows import pick_windows
from skyport.timetable import Policy, Pool, QueuedJob, RunningJob, Snapshot, load_policy, plan
from skyport.timetable.snapshot import COST, TIME

__all__ = ["DEFAULT_POOLS", "parse_pools", "replay_pools", "run_multigate"]

# KTH-SP2 has 100 processors: a slow, cheap pool of the same size beside it (spot-like:
# a third of the price, 10 minutes to come up) and the fast one (1 minute to come up)
DEFAULT_POOLS = "cheap:100:0.03:600,fast:100:0.10:60"


def parse_pools(text: str) -> tuple[Pool, ...]:
    """``name:capacity:price_per_proc_hour:boot_s,...`` -> pools; ValueError names the part."""
    pools = []
    for part in text.split(","):
        fields = part.split(":")
        if len(fields) != 4:
            raise ValueError(f"--pools: {part!r} is not name:capacity:price:boot_s")
        name, capacity, price, boot = fields
        try:
            pool = Pool(name, int(capacity), float(price), float(boot))
        except ValueError as exc:
            raise ValueError(f"--pools: {part!r}: capacity is a whole number, price and "
                             "boot_s are numbers") from exc
        if pool.capacity <= 0 or not (math.isfinite(pool.price_per_hour or 0.0)
                                      and (pool.price_per_hour or 0.0) >= 0
                                      and math.isfinite(pool.boot_s) and pool.boot_s >= 0):
            raise ValueError(f"--pools: {part!r}: capacity > 0, price >= 0 and boot_s >= 0")
        pools.append(pool)
    if len({p.name for p in pools}) != len(pools):
        raise ValueError(f"--pools: names must be unique, got {[p.name for p in pools]}")
    return tuple(pools)


@dataclass
class PoolsReplay:
    starts: list[float | None]  # planned start; None: cancelled
    pool: list[str | None]
    passes: int


def replay_pools(
    jobs: Sequence[TraceJob],
    pools: tuple[Pool, ...],
    policy: Policy,
    *,
    prefer: str = TIME,
    slack: float | None = None,
) -> PoolsReplay:
    """Replay ``jobs`` (sorted by submit time) on ``pools``; see the module docstring."""
    fastest = min(p.boot_s for p in pools)
    boot = {p.name: p.boot_s for p in pools}
    queued_jobs = [
        QueuedJob(i, job.user, job.submit_s, job.procs, job.req_s, prefer=prefer,
                  deadline_s=None if slack is None
                  else job.submit_s + fastest + slack * job.req_s)
        for i, job in enumerate(jobs)
    ]
    starts: list[float | None] = [None] * len(jobs)
    where: list[str | None] = [None] * len(jobs)
    queue: dict[int, QueuedJob] = {}
    running: dict[int, RunningJob] = {}
    ends: list[tuple[float, int]] = []
    nxt, n, passes = 0, len(jobs), 0
    while nxt < n or ends:
        now = jobs[nxt].submit_s if nxt < n else ends[0][0]
        if ends and ends[0][0] < now:
            now = ends[0][0]
        while ends and ends[0][0] <= now:
            running.pop(heapq.heappop(ends)[1])
        while nxt < n and jobs[nxt].submit_s <= now:
            queue[nxt] = queued_jobs[nxt]
            nxt += 1
        if not queue:
            continue
        table = plan(Snapshot(now, tuple(queue.values()), tuple(running.values()), pools),
                     policy)
        passes += 1
        for gone in table.unplaceable:  # the Core ends it with the reason
            queue.pop(int(gone.job_id))
        for p in table.to_start_now:
            i = int(p.job_id)
            job = queue.pop(i)
            b = boot[p.pool]
            running[i] = RunningJob(i, job.owner, p.pool, job.procs, now, b + job.est_runtime_s)
            starts[i], where[i] = now, p.pool
            heapq.heappush(ends, (now + b + jobs[i].run_s, i))
    return PoolsReplay(starts, where, passes)


def score_pools(jobs: Sequence[TraceJob], result: PoolsReplay,
                pools: tuple[Pool, ...]) -> dict[str, Any]:
    """Waits (to running, boot included), bounded slowdown, cost, and where jobs ran."""
    by_name = {p.name: p for p in pools}
    ran = [i for i, s in enumerate(result.starts) if s is not None]
    waits, bslds, cost = [], [], 0.0
    on: dict[str, int] = {p.name: 0 for p in pools}
    for i in ran:
        job, pool = jobs[i], by_name[result.pool[i] or ""]
        start = result.starts[i]
        assert start is not None
        wait = start + pool.boot_s - job.submit_s
        waits.append(wait)
        bslds.append(max(1.0, (wait + job.run_s) / max(job.run_s, BSLD_TAU_S)))
        cost += job.procs * (pool.price_per_hour or 0.0) * (pool.boot_s + job.run_s) / 3600.0
        on[pool.name] += 1
    w = np.asarray(waits or [0.0])
    return {
        "jobs": len(jobs),
        "ran": len(ran),
        "cancelled": len(jobs) - len(ran),
        "mean_wait_s": float(w.mean()),
        "p99_wait_s": float(np.percentile(w, 99)),
        "max_wait_s": float(w.max()),
        "mean_bsld": statistics.fmean(bslds) if bslds else 0.0,
        "total_cost": cost,
        **{f"jobs_on_{name}": count for name, count in on.items()},
        "passes": result.passes,
    }


def run_multigate(
    trace: Trace,
    policy_name: str,
    pools: tuple[Pool, ...],
    *,
    prefer: str = COST,
    slack: float | None = None,
    baseline: bool = False,
    windows: int = 0,
    window_len: int = 1024,
    seed: int = 1,
) -> dict[str, Any]:
    """One setting on one trace, whole or averaged over windows (sums for counts and cost)."""
    policy = load_policy(policy_name)
    if baseline:  # the fastest pool alone, placed as every job always was
        pools = (min(pools, key=lambda p: p.boot_s),)
        prefer, slack = TIME, None
    wall0 = time.perf_counter()
    samples = pick_windows(trace.jobs, windows, window_len, seed) if windows else [trace.jobs]
    results = [score_pools(jobs, replay_pools(jobs, pools, policy, prefer=prefer, slack=slack),
                           pools) for jobs in samples]
    out: dict[str, Any] = {
        "trace": trace.name, "policy": policy_name,
        "pools": ",".join(f"{p.name}:{p.capacity}:{p.price_per_hour:g}:{p.boot_s:g}"
                          for p in pools),
        "prefer": prefer, "slack": slack,
    }
    summed = {"jobs", "ran", "cancelled", "total_cost", "passes"} | {
        k for k in results[0] if k.startswith("jobs_on_")}
    for key in results[0]:
        values = [r[key] for r in results]
        out[key] = sum(values) if key in summed else statistics.fmean(values)
    if windows:
        out.update(windows=windows, window_len=window_len, seed=seed)
    out["wall_s"] = time.perf_counter() - wall0
    return out
