"""``python -m benchmarks.system``: see the package's docstring."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.system import measures as m
from benchmarks.system.plane import Plane, private_plane

# name -> (run, default size, --quick size)
SIZES: dict[str, tuple[Callable[[Plane, int], dict], int, int]] = {
    "accept": (m.accept, 200, 60),
    "cli": (m.cli_submit, 7, 3),
    "start": (m.start_latency, 7, 3),
    "function": (m.function_round_trip, 7, 3),
    "drain": (m.drain, 400, 80),
    "mpi": (m.mpi_hello, 5, 3),
    "list": (lambda plane, n: m.listing(plane, n, 7), 10_000, 2_000),
}


def machine() -> str:
    cpus = os.cpu_count()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return f"{platform.node()}: {cpus} cores, load {load:.1f}, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "?"


def table(results: dict) -> str:
    rows = [("measure", "unit", "Sky Port", "baseline", "ratio", "baseline is")]
    for name, r in results.items():
        if "error" in r:
            rows.append((name, "", "ERROR", "", "", r["error"][:60]))
            continue
        rows.append((name, r["unit"], str(r["skyport"]), str(r["baseline"]), str(r["ratio"]),
                     r["baseline_is"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.system",
                                     description="issue 11's measures against bare baselines")
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    parser.add_argument("--json", action="store_true", help="print one JSON object too")
    parser.add_argument("--only", nargs="+", choices=sorted(SIZES), help="these measures only")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    t0 = time.monotonic()
    with private_plane() as plane:
        for name in args.only or SIZES:
            run, size, quick = SIZES[name]
            try:
                results.update(run(plane, quick if args.quick else size))
            except Exception as exc:  # noqa: BLE001 - one failed measure: the others go on
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    report = {"commit": commit(), "machine": machine(), "quick": args.quick,
              "seconds": round(time.monotonic() - t0, 1), "results": results}
    print(table(results))
    print(f"({report['machine']}; commit {report['commit']}; {report['seconds']} s)")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
