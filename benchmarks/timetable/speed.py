"""Speed report: single passes at scale, whole-trace replays, and the baseline ratio.

Replays are timed ``repeats`` times each, every policy and the baseline
simulator in turn within each round, and the best round is kept: on a shared
machine other work only ever adds time, so the minimum is the figure least
disturbed by it. Wall time (``perf_counter``) and this process's CPU time
(``process_time``) are both reported; the ratio of the engine's EASY replay to
the baseline is taken from the same rounds.
"""

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
    traces: Sequence[Trace],
    policies: Sequence[str] | None,
    queued: int,
    running: int,
    repeats: int = 3,
) -> dict[str, Any]:
    """Pass times on synthetic snapshots and replay times on ``traces``, per policy."""
    names = list(policies or known_policies())
    report: dict[str, Any] = {"passes": {}, "replays": {}, "repeats": repeats}
    for shape in ("mixed", "scan"):
        snapshot = synthetic_snapshot(queued, running, shape=shape)
        report["passes"][shape] = {
            name: time_pass(snapshot, load_policy(name), repeats=repeats) for name in names
        }
    for trace in traces:
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for _ in range(repeats):
            for name in [*names, "baseline_easy"]:
                w0, c0 = time.perf_counter(), time.process_time()
                if name == "baseline_easy":
                    simulate_easy(trace.jobs, trace.capacity)
                else:
                    replay(trace.jobs, trace.capacity, load_policy(name))
                w, c = time.perf_counter() - w0, time.process_time() - c0
                wall[name] = min(wall.get(name, w), w)
                cpu[name] = min(cpu.get(name, c), c)
        row: dict[str, Any] = {"wall_s": wall, "cpu_s": cpu}
        if "easy" in wall:
            row["easy_over_baseline_wall"] = wall["easy"] / wall["baseline_easy"]
            row["easy_over_baseline_cpu"] = cpu["easy"] / cpu["baseline_easy"]
        report["replays"][trace.name] = row
    return report
