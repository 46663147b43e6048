"""Reliability benchmark: a batch of checkpointing jobs under injected failures.

    python -m benchmarks.reliability --jobs 40 --kill-rate 0.02 --preempt-rate 0.02 \\
        --controlplane-kills 2 --seed 1 [--baseline] [--json]

On a fresh control plane (local gate, a temporary state directory) it submits
``--jobs`` counter jobs (1 or 2 nodes; each counts to a random N, keeping its
count in ``$SKYPORT_CHECKPOINT_DIR`` with ``--checkpoint-every``), and while
they run injects, every second and for every RUNNING job, a node loss
(``debug kill-node``) with probability ``--kill-rate`` and a preemption
(``debug preempt``) with probability ``--preempt-rate``; plus
``--controlplane-kills`` SIGKILLs of the control plane, evenly spaced, each
followed by a restart.  It then reports:

* submitted, completed, failed (with reasons), lost (not terminal at the end:
  must be 0);
* duplicated (must be 0): a job whose output does not show exactly one
  completed count, or whose attempts overlap in time;
* rerun after exit: attempts whose payload had ended with 0 but whose node 0
  was lost while it collected the outputs: by policy such an attempt is run
  again from its latest checkpoint (its outputs are gone), so its job shows
  one completed count more, which is not counted as duplicated;
* clusters leaked (must be 0): local-gate cluster records left once every job
  ended and the reaper ran;
* time lost to failures: running time beyond the uninterrupted time, and the
  gaps between attempts (restart overheads).  With ``--baseline`` the same
  batch (the same ``--seed``) first runs on its own fresh control plane with
  no injected failure, and the table shows both runs side by side plus their
  difference: time lost to failures = failure run - baseline run.

The issue's full run (``--jobs 200 --controlplane-kills 3``) takes a while on
a 2-core machine; it is an option, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skyport.client import Client, connect
from skyport.config import StateDir
from skyport.controlplane import init_state, read_pid, start, stop
from skyport.errors import SkyportError
from skyport.models import Job, JobState
from skyport.script import build_spec

STEP_S = 0.2
SCRIPT = """#!/bin/bash
#SKYPORT --nodes={nodes} --cpus-per-node=1 --checkpoint-every={every}s --time=10m
#SKYPORT --max-restarts={max_restarts} --name=rel-{i}
f="$SKYPORT_CHECKPOINT_DIR/count"
i=$(cat "$f" 2>/dev/null || echo 0)
echo "attempt $SKYPORT_RESTART_COUNT starts at $i"
while [ "$i" -lt {n} ]; do
  sleep {step}
  i=$((i + 1))
  echo "$i" > "$f.tmp" && mv "$f.tmp" "$f"
done
echo "count=$i"
"""


@dataclass
class Report:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    failed_reasons: dict[str, str] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    rerun_after_exit: int = 0
    clusters_leaked: int = 0
    node_kills: int = 0
    preemptions: int = 0
    controlplane_kills: int = 0
    restarts: int = 0
    ideal_running_s: float = 0.0
    running_s: float = 0.0
    extra_running_s: float = 0.0
    restart_gaps_s: float = 0.0
    mean_restart_gap_s: float = 0.0
    wall_s: float = 0.0


def _retry(fn: Any, *args: Any, tries: int = 120, **kwargs: Any) -> Any:
    for _ in range(tries):
        try:
            return fn(*args, **kwargs)
        except SkyportError as exc:
            last = exc
            time.sleep(0.5)
    raise last




def batch(args: argparse.Namespace) -> list[tuple[int, int]]:
    """The jobs of a run, ``(nodes, steps)`` each: the same for the same ``--seed``."""
    rng = random.Random(args.seed)
    return [
        (rng.choice((1, 2)), rng.randint(args.min_steps, args.max_steps)) for _ in range(args.jobs)
    ]


def _reran_after_exit(job: Job) -> int:
    """Attempts requeued after their payload exited with 0 (node 0 lost in STAGING_OUT)."""
    events = job.events
    return sum(
        1
        for a, b in zip(events, events[1:], strict=False)
        if a.state == JobState.STAGING_OUT
        and a.reason == "payload exited with 0"
        and b.state == JobState.QUEUED
    )


def run(args: argparse.Namespace, *, failures: bool = True) -> Report:
    """Run ``batch(args)`` on a fresh control plane; ``failures=False``: inject none."""
    rng = random.Random(f"{args.seed}-failures")  # what is injected, apart from the batch
    home = Path(tempfile.mkdtemp(prefix="sp-rel-", dir="/tmp"))
    state = StateDir(home)
    init_state(state, local_cpus=args.cpus)
    start(state)
    report = Report()
    t0 = time.monotonic()
    try:
        client: Client = connect(home)
        want: dict[str, int] = {}
        for i, (nodes, n) in enumerate(batch(args)):
            spec = build_spec(
                SCRIPT.format(
                    nodes=nodes,
                    every=args.checkpoint_every,
                    i=i,
                    n=n,
                    step=STEP_S,
                    max_restarts=args.max_restarts,
                )
            )
            want[client.submit(spec).id] = n
        report.submitted = len(want)
        report.ideal_running_s = sum(want.values()) * STEP_S
        cp_kills = args.controlplane_kills if failures else 0
        cp_kills_at = [args.duration_s * (k + 1) / (cp_kills + 1) for k in range(cp_kills)]
        deadline = t0 + args.timeout_s
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - t0
            if cp_kills_at and elapsed >= cp_kills_at[0]:
                cp_kills_at.pop(0)
                pid = read_pid(state)
                if pid:
                    client.close()
                    os.kill(pid, signal.SIGKILL)
                    report.controlplane_kills += 1
                    time.sleep(1.0)
                    start(state)
                    client = connect(home)
            try:
                jobs = client.jobs()
            except SkyportError:
                time.sleep(1)
                continue
            if all(j.state.is_terminal() for j in jobs) and not cp_kills_at:
                break
            for j in jobs:
                if j.state != JobState.RUNNING or not failures:
                    continue
                try:
                    if rng.random() < args.kill_rate:
                        client.debug_kill_node(j.id, rng.randrange(j.nodes))
                        report.node_kills += 1
                    elif rng.random() < args.preempt_rate:
                        client.debug_preempt(j.id, notice_s=args.notice_s)
                        report.preemptions += 1
                except SkyportError:
                    pass  # it ended or moved on meanwhile
            time.sleep(1.0)
        report.wall_s = time.monotonic() - t0
        time.sleep(3)  # clusters of the last jobs are being deleted
        _retry(client.status)
        for job_id, n in want.items():
            job = _retry(client.job, job_id)
            report.restarts += job.restarts
            if not job.state.is_terminal():
                report.lost += 1
                continue
            runs = job.running_spans()
            report.running_s += sum(b - a for a, b in runs)
            report.restart_gaps_s += sum(runs[k + 1][0] - runs[k][1] for k in range(len(runs) - 1))
            overlap = any(runs[k + 1][0] < runs[k][1] for k in range(len(runs) - 1))
            reran = _reran_after_exit(job)
            report.rerun_after_exit += reran
            if job.state == JobState.SUCCEEDED:
                report.completed += 1
                out = _retry(client.logs, job_id).data.decode(errors="replace")
                if out.count("count=") != 1 + reran or f"count={n}" not in out or overlap:
                    report.duplicated += 1
            else:
                report.failed += 1
                report.failed_reasons[job_id] = f"{job.state.value}: {job.reason}"
        report.extra_running_s = max(0.0, report.running_s - report.ideal_running_s)
        report.mean_restart_gap_s = report.restart_gaps_s / max(1, report.restarts)
        records = state.gate_dir("local") / "clusters"
        for _ in range(20):  # the reaper deletes what a killed control plane left
            report.clusters_leaked = len(list(records.glob("*.json")))
            if not report.clusters_leaked:
                break
            time.sleep(1)
        client.close()
    finally:
        stop(state)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    return report


def _fmt(v: Any) -> str:
    return str(round(v, 2) if isinstance(v, float) else v)


def _table(report: Report, baseline: Report | None = None) -> str:
    rows = [k for k in asdict(report) if k != "failed_reasons"]
    width = max(len(k) for k in rows)
    if baseline is None:
        lines = [f"{k.replace('_', ' '):<{width}}  {_fmt(getattr(report, k))}" for k in rows]
    else:
        lines = [f"{'':<{width}}  {'failures':>10}  {'baseline':>10}"]
        lines += [
            f"{k.replace('_', ' '):<{width}}  {_fmt(getattr(report, k)):>10}  "
            f"{_fmt(getattr(baseline, k)):>10}"
            for k in rows
        ]
        lost = lost_to_failures(report, baseline)
        lines.append("time lost to failures (failure run - baseline run):")
        lines += [f"  {k.replace('_', ' '):<{width}}  {v:>10.2f}" for k, v in lost.items()]
    for name, r in (("", report), ("baseline ", baseline)):
        if r is not None and r.failed_reasons:
            lines.append(f"{name}failed jobs:")
            lines += [f"  {job_id}: {why}" for job_id, why in r.failed_reasons.items()]
    return "\n".join(lines)


def lost_to_failures(report: Report, baseline: Report) -> dict[str, float]:
    """What the failures cost: the failure run minus the baseline run."""
    return {
        "wall_s": report.wall_s - baseline.wall_s,
        "running_s": report.running_s - baseline.running_s,
        "restart_gaps_s": report.restart_gaps_s - baseline.restart_gaps_s,
    }


def _ok(report: Report) -> bool:
    return report.lost == 0 and report.duplicated == 0 and not report.clusters_leaked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.reliability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--jobs", type=int, default=40)
    p.add_argument("--kill-rate", type=float, default=0.02, help="per running job per second")
    p.add_argument("--preempt-rate", type=float, default=0.02, help="per running job per second")
    p.add_argument("--controlplane-kills", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cpus", type=int, default=8, help="cores the local gate hands out")
    p.add_argument("--min-steps", type=int, default=20, help=f"steps of {STEP_S}s per job")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--checkpoint-every", type=int, default=3, help="seconds")
    p.add_argument("--max-restarts", type=int, default=10)
    p.add_argument("--notice-s", type=float, default=5.0)
    p.add_argument(
        "--duration-s",
        type=float,
        default=60.0,
        help="the control-plane kills are spread over this long",
    )
    p.add_argument("--timeout-s", type=float, default=1800.0)
    p.add_argument("--keep", action="store_true", help="keep the state directory")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="first run the same batch with no injected failure, to subtract",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    baseline = run(args, failures=False) if args.baseline else None
    report = run(args)
    if args.json:
        out: dict[str, Any] = {"failures": asdict(report)}
        if baseline is not None:
            out["baseline"] = asdict(baseline)
            out["lost_to_failures"] = lost_to_failures(report, baseline)
        print(json.dumps(out, indent=2))
    else:
        print(_table(report, baseline))
    return 0 if _ok(report) and (baseline is None or _ok(baseline)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
