"""Two versions of ``skyport/timetable/profile.py``, timed in one process on the same pass.

  python -m benchmarks.timetable.profile_ab BEFORE.py [AFTER.py] [--shape mixed] [--rounds 5]

AFTER defaults to the tree's own profile. The conservative pass (every queued
job reserved on the profile) runs on the synthetic snapshot of
:mod:`benchmarks.timetable.passbench`, alternating the two versions round by
round, so load from other work on a shared machine falls on both; the figure
is the ratio of the best rounds. It also checks that both versions plan every
job alike. Get a BEFORE with ``git show REV:skyport/timetable/profile.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.timetable.passbench import synthetic_snapshot
from skyport.timetable import engine, load_policy, plan

__all__ = ["compare_profiles"]


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--before/--after: cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "AvailabilityProfile"):
        raise ValueError(f"{path!r} defines no AvailabilityProfile")
    return module


def compare_profiles(
    before: str, after: str, *, shape: str = "mixed", rounds: int = 5
) -> dict[str, Any]:
    """Best and median ms of the conservative pass with each profile, and after / before."""
    versions = {"before": _load(before, "_profile_before"), "after": _load(after, "_profile_after")}
    snapshot = synthetic_snapshot(10_000, 1_000, shape=shape)
    policy = load_policy("conservative")
    times: dict[str, list[float]] = {key: [] for key in versions}
    plans: dict[str, list[tuple[Any, ...]]] = {}
    kept = engine.AvailabilityProfile
    try:
        for _ in range(rounds):
            for key, module in versions.items():
                engine.AvailabilityProfile = module.AvailabilityProfile  # type: ignore[misc]
                t0 = time.perf_counter()
                timetable = plan(snapshot, policy)
                times[key].append((time.perf_counter() - t0) * 1e3)
                plans[key] = [
                    (p.job_id, p.start_s, p.kind) for p in timetable.starts + timetable.reserved
                ]
    finally:
        engine.AvailabilityProfile = kept  # type: ignore[misc]
    out: dict[str, Any] = {
        "shape": shape,
        "rounds": rounds,
        "same_plan": plans["before"] == plans["after"],
    }
    for key, values in times.items():
        out[f"{key}_ms_best"] = min(values)
        out[f"{key}_ms_median"] = sorted(values)[len(values) // 2]
    out["after_over_before_best"] = out["after_ms_best"] / out["before_ms_best"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timetable.profile_ab")
    parser.add_argument("before")
    parser.add_argument(
        "after", nargs="?", default=str(Path(engine.__file__).with_name("profile.py"))
    )
    parser.add_argument("--shape", choices=("mixed", "scan"), default="mixed")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rounds <= 0:
        parser.error(f"--rounds: {args.rounds} is not allowed; give a whole number > 0")
    print(
        json.dumps(compare_profiles(args.before, args.after, shape=args.shape, rounds=args.rounds))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
