"""Every policy x trace x protocol: the quality and fairness table of ``benchmarks/RESULTS.md``.

  python -m benchmarks.timetable.table --out results/ [--policy P ...] [--trace T ...]

Protocols: ``whole`` (the whole trace, requested times as logged),
``whole, req=run`` (requested time = runtime, as RLScheduler does),
``10x1024 seeds 1-3`` and its ``req=run`` twin (30 windows of 1,024
consecutive jobs, each on an empty machine). A trace with no logged
requested times (Lublin) has one protocol per pair, marked ``(= req=run)``.
Window rows give the mean over the 30 windows of mean wait and mean bounded
slowdown, and the p99 / largest wait / share over 24 h of all their jobs
pooled. Rows go to ``rows.jsonl`` as they finish (a long run can be
resumed: rows already there are skipped), the table to ``table.md``, the
wait-tail plots (complementary CDF of the wait, log-log, from one hour) to
``<trace>-<protocol>-wait-tail.png``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.timetable.metrics import score  # noqa: E402
from benchmarks.timetable.replay import replay  # noqa: E402
from benchmarks.timetable.swf import Trace, read_swf  # noqa: E402
from benchmarks.timetable.windows import pick_windows  # noqa: E402
from skyport.timetable import known_policies, load_policy  # noqa: E402

__all__ = ["main"]

TRACES = (
    "/work/shared/traces/KTH-SP2-1996-2.1-cln.swf",
    "/work/shared/traces/lublin_256.swf",
    "/work/shared/traces/lublin_256_new2.swf",
)
SEEDS = (1, 2, 3)


def _req_is_run(trace: Trace) -> Trace:
    return replace(trace, jobs=tuple(replace(j, req_s=j.run_s) for j in trace.jobs))


def _row(trace: Trace, protocol: str, policy: str, windows: bool) -> tuple[dict[str, Any], Any]:
    pol = load_policy(policy)
    samples = (
        [w for seed in SEEDS for w in pick_windows(trace.jobs, 10, 1024, seed)]
        if windows
        else [trace.jobs]
    )
    waits, means, bslds = [], [], []
    for jobs in samples:
        starts = replay(jobs, trace.capacity, pol).starts
        m = score(jobs, starts, trace.capacity)
        means.append(m["mean_wait_s"])
        bslds.append(m["mean_bsld"])
        waits.append(np.asarray(starts) - [j.submit_s for j in jobs])
    wait = np.concatenate(waits)
    row = {
        "trace": trace.name,
        "protocol": protocol,
        "policy": policy,
        "mean_wait_s": float(np.mean(means)),
        "mean_bsld": float(np.mean(bslds)),
        "p99_wait_s": float(np.percentile(wait, 99)),
        "max_wait_s": float(wait.max()),
        "share_wait_over_24h": float((wait > 86_400.0).mean()),
    }
    return row, wait


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| trace | protocol | policy | mean wait (s) | mean bsld | p99 wait (s) "
        "| largest wait (s) | wait > 24 h |"
    )
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['trace']} | {r['protocol']} | {r['policy']} | {r['mean_wait_s']:,.0f} | "
            f"{r['mean_bsld']:,.2f} | {r['p99_wait_s']:,.0f} | {r['max_wait_s']:,.0f} | "
            f"{100 * r['share_wait_over_24h']:.2f} % |"
        )
    return "\n".join(lines) + "\n"


def _plot_tail(title: str, waits: dict[str, np.ndarray], path: Path) -> None:
    """Complementary CDF of the wait, log-log: the tail, where starvation shows."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, wait in waits.items():
        xs = np.sort(np.maximum(wait, 1.0))
        ax.step(xs, 1.0 - np.arange(len(xs)) / len(xs), where="post", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(left=3600.0)
    ax.axvline(86_400.0, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("wait (s)")
    ax.set_ylabel("fraction of jobs waiting longer")
    ax.set_title(f"{title}: wait tail")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timetable.table")
    parser.add_argument("--out", required=True)
    parser.add_argument("--trace", action="append")
    parser.add_argument("--policy", action="append")
    parser.add_argument("--no-windows", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {}
    if rows_path.exists():
        for line in rows_path.read_text().splitlines():
            r = json.loads(line)
            done[(r["trace"], r["protocol"], r["policy"])] = r
    names = args.policy or list(known_policies())
    shown: list[tuple[str, str, str]] = []  # rows of this run, in trace, protocol, policy order
    for path in args.trace or TRACES:
        logged = read_swf(path)
        has_req = any(j.req_s != j.run_s for j in logged.jobs)
        variants = [("whole", logged, False)]
        if has_req:
            variants.append(("whole, req=run", _req_is_run(logged), False))
        else:
            variants[0] = ("whole (= req=run)", logged, False)
        if not args.no_windows:
            if has_req:
                variants += [
                    ("10x1024 s1-3", logged, True),
                    ("10x1024 s1-3, req=run", _req_is_run(logged), True),
                ]
            else:
                variants.append(("10x1024 s1-3 (= req=run)", logged, True))
        for protocol, trace, windows in variants:
            waits: dict[str, np.ndarray] = {}
            for name in names:
                key = (trace.name, protocol, name)
                shown.append(key)
                npy = out / f"{trace.name}-{protocol.replace(' ', '_').replace(',', '')}-{name}.npy"
                if key in done and npy.exists():
                    waits[name] = np.load(npy)
                    continue
                row, wait = _row(trace, protocol, name, windows)
                np.save(npy, wait)
                waits[name] = wait
                done[key] = row
                with rows_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
            slug = protocol.replace(" (= req=run)", "").replace(" ", "_")
            slug = slug.replace(",", "").replace("=", "")
            plot = out / f"{Path(trace.name).stem}-{slug}-wait-tail.png"
            _plot_tail(f"{trace.name}, {protocol}", waits, plot)
    (out / "table.md").write_text(_table([done[key] for key in shown]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
