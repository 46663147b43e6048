"""One policy on one trace, whole or in windows: the numbers ``--json`` prints."""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.timetable.metrics import score
from benchmarks.timetable.replay import replay
from benchmarks.timetable.swf import Trace
from benchmarks.timetable.windows import pick_windows
from skyport.timetable import load_policy

__all__ = ["run_policy"]


def run_policy(
    trace: Trace,
    policy_name: str,
    *,
    windows: int = 0,
    window_len: int = 1024,
    seed: int = 1,
    overcommit: bool = False,
) -> dict[str, Any]:
    """Replay ``trace`` under ``policy_name``; window mode averages over the windows."""
    policy = load_policy(policy_name)
    wall0 = time.perf_counter()
    samples = pick_windows(trace.jobs, windows, window_len, seed) if windows else [trace.jobs]
    results = []
    for jobs in samples:
        replayed = replay(jobs, trace.capacity, policy, overcommit=overcommit)
        metrics: dict[str, Any] = score(jobs, replayed.starts, trace.capacity)
        passes = replayed.pass_s
        metrics["passes"] = len(passes)
        metrics["mean_pass_ms"] = 1e3 * statistics.fmean(passes) if passes else 0.0
        metrics["max_pass_ms"] = 1e3 * max(passes, default=0.0)
        results.append(metrics)
    out: dict[str, Any] = {"trace": trace.name, "policy": policy_name}
    for key in results[0]:
        values = [r[key] for r in results]
        out[key] = values[0] if len(values) == 1 else statistics.fmean(values)
    out["capacity"] = trace.capacity
    out["max_pass_ms"] = max(r["max_pass_ms"] for r in results)
    if windows:
        out.update(windows=windows, window_len=window_len, seed=seed)
    if overcommit:
        out["overcommit"] = True
    out["wall_s"] = time.perf_counter() - wall0
    return out
