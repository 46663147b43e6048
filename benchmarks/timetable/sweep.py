"""One line per policy configuration: the issue-15 figures that decide between variants.

  python -m benchmarks.timetable.sweep sky '{"max_wait_s": 86400}' [KTH,L1,L2,L1:win]

Prints (and appends to ``--log``, if given) the mean bounded slowdown and the
largest wait of each run: ``KTH``, ``L1``, ``L2`` are the whole traces,
``NAME:win`` the 30 windows of 1,024 jobs (10 per seed, seeds 1-3) of the
window protocol, as in :mod:`benchmarks.timetable.table`. The knobs are the
policy's config fields as JSON. Runs go one after another (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.timetable.metrics import score
from benchmarks.timetable.replay import replay
from benchmarks.timetable.swf import read_swf
from benchmarks.timetable.table import SEEDS, TRACES
from benchmarks.timetable.windows import pick_windows
from skyport.timetable import UnknownPolicyError, load_policy

__all__ = ["main", "run"]

_NAMES = {"KTH": TRACES[0], "L1": TRACES[1], "L2": TRACES[2]}


def run(policy: str, knobs: dict[str, Any], what: str) -> tuple[float, float]:
    """Mean bounded slowdown and largest wait of ``policy`` on ``what`` (e.g. ``L1:win``)."""
    name, _, mode = what.partition(":")
    trace = read_swf(_NAMES[name])
    pol = load_policy(policy, **knobs)
    samples = (
        [w for seed in SEEDS for w in pick_windows(trace.jobs, 10, 1024, seed)]
        if mode == "win"
        else [trace.jobs]
    )
    bslds: list[float] = []
    largest = 0.0
    for jobs in samples:
        starts = replay(jobs, trace.capacity, pol).starts
        bslds.append(score(jobs, starts, trace.capacity)["mean_bsld"])
        largest = max(largest, max(s - j.submit_s for s, j in zip(starts, jobs, strict=True)))
    return statistics.fmean(bslds), largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timetable.sweep")
    parser.add_argument("policy")
    parser.add_argument("knobs", nargs="?", default="{}", help="config fields as JSON")
    parser.add_argument("runs", nargs="?", default="KTH,L1,L2,L1:win")
    parser.add_argument("--log", type=Path, help="append the line to this file")
    args = parser.parse_args(argv)
    try:
        knobs = json.loads(args.knobs)
    except json.JSONDecodeError as exc:
        print(f"error: knobs: {args.knobs!r} is not JSON ({exc}); give an object", file=sys.stderr)
        return 2
    if not isinstance(knobs, dict):
        print(f"error: knobs: {args.knobs!r} is not a JSON object", file=sys.stderr)
        return 2
    runs = args.runs.split(",")
    for what in runs:
        name, _, mode = what.partition(":")
        if name not in _NAMES or mode not in ("", "win"):
            print(
                f"error: runs: {what!r} is not allowed; use {', '.join(_NAMES)}, "
                "each optionally with ':win'",
                file=sys.stderr,
            )
            return 2
    try:
        load_policy(args.policy, **knobs)
    except (UnknownPolicyError, ValueError, TypeError) as exc:
        print(f"error: {args.policy} {args.knobs}: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    figures = {what: run(args.policy, knobs, what) for what in runs}
    line = (
        f"{args.policy} {json.dumps(knobs)}  "
        + "  ".join(f"{w} {b:.2f}/{m:,.0f}" for w, (b, m) in figures.items())
        + f"  ({time.perf_counter() - t0:.0f} s)"
    )
    print(line)
    if args.log is not None:
        with args.log.open("a") as log:
            log.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
