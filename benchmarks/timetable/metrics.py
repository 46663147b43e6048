"""Score a replay: waits, bounded slowdown, utilization, makespan."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.timetable.swf import TraceJob

__all__ = ["BSLD_TAU_S", "score"]

BSLD_TAU_S = 10.0


def score(jobs: Sequence[TraceJob], starts: Sequence[float], capacity: int) -> dict[str, float]:
    """Metrics of one replay (``starts[i]`` is when ``jobs[i]`` started)."""
    submit = np.fromiter((j.submit_s for j in jobs), float, len(jobs))
    run = np.fromiter((j.run_s for j in jobs), float, len(jobs))
    procs = np.fromiter((j.procs for j in jobs), float, len(jobs))
    start = np.asarray(starts, float)
    wait = start - submit
    bsld = np.maximum(1.0, (wait + run) / np.maximum(run, BSLD_TAU_S))
    t0 = float(submit.min())
    last_end = float((start + run).max())
    work = float((procs * run).sum())
    span = last_end - t0
    return {
        "jobs": len(jobs),
        "capacity": capacity,
        "mean_wait_s": float(wait.mean()),
        "p95_wait_s": float(np.percentile(wait, 95)),
        "p99_wait_s": float(np.percentile(wait, 99)),
        "max_wait_s": float(wait.max()),
        "share_wait_over_24h": float((wait > 86_400.0).mean()),
        "mean_bsld": float(bsld.mean()),
        "utilization": work / (capacity * span) if span > 0 else 0.0,
        "makespan_s": span,
        "makespan_lower_bound_s": max(work / capacity, float((submit - t0 + run).max())),
    }
