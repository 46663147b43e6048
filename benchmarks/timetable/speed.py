"""Speed report: single passes at scale, whole-trace replays, and the baseline ratio."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from benchmarks.timetable.baseline import simulate_easy
from benchmarks.timetable.passbench import synthetic_snapshot, time_pass
from benchmarks.timetable.replay import replay
from benchmarks.timetable.swf import Trace
from skyport.timetable import known_policies, load_policy

__all__ = ["speed"]


def speed(
    traces: Sequence[Trace], policies: Sequence[str] | None, queued: int, running: int
) -> dict[str, Any]:
    """Pass times on synthetic snapshots and replay wall times on ``traces``, per policy."""
    names = list(policies or known_policies())
    report: dict[str, Any] = {"passes": {}, "replays": {}}
    for shape in ("mixed", "scan"):
        snapshot = synthetic_snapshot(queued, running, shape=shape)
        report["passes"][shape] = {
            name: time_pass(snapshot, load_policy(name), repeats=3) for name in names
        }
    for trace in traces:
        row: dict[str, Any] = {}
        for name in names:
            t0 = time.perf_counter()
            replay(trace.jobs, trace.capacity, load_policy(name))
            row[name] = time.perf_counter() - t0
        _, baseline_s = simulate_easy(trace.jobs, trace.capacity)
        row["baseline_easy"] = baseline_s
        if "easy" in row:
            row["easy_over_baseline"] = row["easy"] / baseline_s
        report["replays"][trace.name] = row
    return report
