"""Every policy on every trace: a Markdown table and PNG plots.

Writes into ``out``: ``results.md`` (one row per trace and policy, whole
trace and, with windows, the window protocol), ``results.json``, and per
trace ``<trace>-waits.png`` (wait distribution per policy) and
``<trace>-utilization.png`` (processors in use over time, daily means).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.timetable.metrics import score  # noqa: E402
from benchmarks.timetable.replay import replay  # noqa: E402
from benchmarks.timetable.run import run_policy  # noqa: E402
from benchmarks.timetable.swf import Trace  # noqa: E402
from skyport.timetable import known_policies, load_policy  # noqa: E402

__all__ = ["compare"]

_COLUMNS = ["mean_wait_s", "p95_wait_s", "max_wait_s", "mean_bsld", "utilization", "wall_s"]


def compare(
    traces: Sequence[Trace],
    out: str | Path,
    policies: Sequence[str] | None = None,
    windows: int = 0,
    window_len: int = 1024,
    seed: int = 1,
) -> list[dict[str, Any]]:
    """Run every policy on every trace; write the table and plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(policies or known_policies())
    rows: list[dict[str, Any]] = []
    for trace in traces:
        waits: dict[str, np.ndarray] = {}
        busy: dict[str, list[tuple[float, int]]] = {}
        for name in names:
            result = replay(trace.jobs, trace.capacity, load_policy(name), record_busy=True)
            metrics = score(trace.jobs, result.starts, trace.capacity)
            metrics.update(trace=trace.name, policy=name, protocol="whole", wall_s=result.wall_s)
            rows.append(metrics)
            waits[name] = np.asarray(result.starts) - [j.submit_s for j in trace.jobs]
            busy[name] = result.busy
            if windows:
                windowed = run_policy(
                    trace, name, windows=windows, window_len=window_len, seed=seed
                )
                windowed["protocol"] = f"{windows}x{window_len} seed {seed}"
                rows.append(windowed)
        _plot_waits(trace, waits, out / f"{trace.name}-waits.png")
        _plot_busy(trace, busy, out / f"{trace.name}-utilization.png")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "results.md").write_text(_table(rows))
    print(_table(rows))
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["trace", "protocol", "policy", *_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["trace"]), str(row["protocol"]), str(row["policy"])]
        for key in _COLUMNS:
            value = float(row[key])
            cells.append(f"{value:.3f}" if key == "utilization" else f"{value:,.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_waits(trace: Trace, waits: dict[str, np.ndarray], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, wait in waits.items():
        xs = np.sort(np.maximum(wait, 1.0))
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("wait (s, waits under 1 s drawn at 1 s)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"{trace.name}: wait distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_busy(trace: Trace, busy: dict[str, list[tuple[float, int]]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 5))
    t0 = trace.jobs[0].submit_s
    for name, log in busy.items():
        if not log:
            continue
        times = np.array([t for t, _ in log]) - t0
        used = np.array([b for _, b in log], float) / trace.capacity
        # Time-weighted daily means of the step function.
        span = np.diff(np.append(times, times[-1]))
        day = (times // 86_400).astype(int)
        weight = np.bincount(day, weights=span)
        area = np.bincount(day, weights=used * span)
        mean = np.divide(area, weight, out=np.zeros_like(area), where=weight > 0)
        ax.plot(np.arange(len(mean)), mean, label=name, linewidth=0.8)
    ax.set_xlabel("day since first submit")
    ax.set_ylabel("processors in use / capacity (daily mean)")
    ax.set_title(f"{trace.name}: utilization over time")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
