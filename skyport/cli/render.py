"""Text rendering for the console: aligned tables, job rows, the timetable Gantt chart.

Pure functions: data and the current time in, a string out; no I/O and no
clock reads, so the tests pin the exact output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from skyport.models import Job, JobState, escape_controls
from skyport.units import format_duration

__all__ = [
    "GanttEntry",
    "as_datetime",
    "format_size",
    "format_when",
    "gantt",
    "safe",
    "job_rows",
    "key_values",
    "table",
    "timing",
]

JOB_HEADERS = ("ID", "NAME", "OWNER", "STATE", "NODES", "SUBMITTED", "STARTED", "ETA/ELAPSED",
               "REASON")

BAR_ACTIVE = "█"  # holds a cluster (provisioning .. staging out)
BAR_PLANNED = "▒"  # queued or scheduled: where the plan puts it
BAR_DONE = "░"
NOW_MARK = "│"


def safe(text: str) -> str:
    """``text`` with every control character escaped (``\\x1b``), newlines and tabs kept.

    Reasons, names and messages come from users and agents: an escape
    sequence in them (an OSC title, a cursor move, a bidi override) must
    reach the terminal as text, never as a command to it.
    """
    return escape_controls(text)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], gap: int = 2) -> str:
    """Plain aligned columns; ``None`` shows as ``-``; no trailing spaces."""
    cells = [[_cell(v) for v in headers]] + [[_cell(v) for v in row] for row in rows]
    ncols = max(len(r) for r in cells)
    widths = [max(len(r[i]) if i < len(r) else 0 for r in cells) for i in range(ncols)]
    lines = []
    for row in cells:
        padded = [c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append((" " * gap).join(padded).rstrip())
    return "\n".join(lines)


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key: value`` lines with the values aligned."""
    items = [(k, _cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in items)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, JobState):
        return value.value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("\n", " ")


def as_datetime(value: datetime | str | float | int | None) -> datetime | None:
    """A timezone-aware datetime from a datetime, an ISO string or epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float):
        dt = datetime.fromtimestamp(value, UTC)
    else:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def format_when(value: datetime | None, now: datetime, tz: tzinfo | None = None) -> str:
    """Short local time: ``HH:MM:SS`` today, ``MM-DD HH:MM`` this year, else the date."""
    if value is None:
        return "-"
    local = as_datetime(value).astimezone(tz)  # type: ignore[union-attr]
    today = as_datetime(now).astimezone(tz)  # type: ignore[union-attr]
    if local.date() == today.date():
        return local.strftime("%H:%M:%S")
    if local.year == today.year:
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%Y-%m-%d")


def timing(job: Job, now: datetime) -> str:
    """ETA for a queued job, elapsed time for a running one, duration for a finished one."""
    now = as_datetime(now)  # type: ignore[assignment]
    started = as_datetime(job.started_at)
    if job.state.is_terminal():
        ended = as_datetime(job.ended_at)
        if started is None or ended is None:
            return "-"
        return format_duration((ended - started).total_seconds())
    if started is not None and job.state.has_cluster():
        return format_duration(max(0.0, (now - started).total_seconds()))
    planned = as_datetime(job.planned_start_at)
    if planned is None:  # no start planned: say why instead of "-"
        return f"({job.wait_reason})" if job.wait_reason else "-"
    wait_s = (planned - now).total_seconds()
    # "~": the Scheduler planned with predicted runtimes, not users' time limits
    mark = "~" if job.planned_start_predicted else ""
    return "now" if wait_s <= 0 else f"{mark}in " + format_duration(wait_s)


def job_rows(jobs: Iterable[Job], now: datetime, tz: tzinfo | None = None) -> list[list[str]]:
    """Rows for ``JOB_HEADERS``."""
    return [
        [
            j.id,
            j.name,
            j.owner,
            j.state.value,
            str(j.nodes),
            format_when(j.submitted_at, now, tz),
            format_when(j.started_at, now, tz),
            timing(j, now),
            j.wait_reason or "",
        ]
        for j in jobs
    ]


@dataclass(frozen=True)
class ArrayRow:
    """A job array as ``skyport jobs`` shows it: one row, its tasks counted per state."""

    array_id: str
    array: str  # the indices as submitted, "0-9999%10"
    tasks: tuple[Job, ...]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in JobState:  # the lifecycle's order, not the first task's
            n = sum(1 for t in self.tasks if t.state is state)
            if n:
                out[state.value] = n
        return out

    def summary(self) -> dict[str, object]:
        first = self.tasks[0]
        return {"id": self.array_id, "kind": "array", "array": self.array, "name": first.name,
                "owner": first.owner, "task_count": len(self.tasks), "counts": self.counts,
                "tasks": [t.id for t in self.tasks]}


def group_arrays(jobs: Iterable[Job]) -> list[Job | ArrayRow]:
    """Jobs in order, each array's tasks folded into one ``ArrayRow`` where its first shows."""
    tasks: dict[str, list[Job]] = {}
    order: list[Job | str] = []
    for j in jobs:
        if j.array_id is None:
            order.append(j)
        else:
            if j.array_id not in tasks:
                tasks[j.array_id] = []
                order.append(j.array_id)
            tasks[j.array_id].append(j)
    return [ArrayRow(x, tasks[x][0].spec.array or "", tuple(tasks[x])) if isinstance(x, str)
            else x for x in order]


def listing_rows(items: Iterable[Job | ArrayRow], now: datetime,
                 tz: tzinfo | None = None) -> list[list[str]]:
    """Rows for ``JOB_HEADERS``: a job's, or an array's (``1234_[0-9999]`` and its counts)."""
    rows: list[list[str]] = []
    for x in items:
        if isinstance(x, Job):
            rows.extend(job_rows([x], now, tz))
            continue
        first = x.tasks[0]
        started = [t.started_at for t in x.tasks if t.started_at is not None]
        reasons = sorted({t.wait_reason for t in x.tasks if t.wait_reason})
        rows.append([
            f"{x.array_id}_[{x.array.partition('%')[0]}]",
            first.name,
            first.owner,
            " ".join(f"{k}:{v}" for k, v in x.counts.items()),
            str(first.nodes),
            format_when(first.submitted_at, now, tz),
            format_when(min(started), now, tz) if started else "",
            "",
            ",".join(reasons),
        ])
    return rows


def format_size(size: int) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``3.0 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- Gantt


@dataclass(frozen=True)
class GanttEntry:
    """One bar: a job planned (or running) from ``start`` to ``end``."""

    label: str
    state: str
    start: datetime
    end: datetime

    @classmethod
    def from_timetable(cls, entry: Mapping[str, Any]) -> GanttEntry:
        start = as_datetime(entry["start"])
        end = as_datetime(entry["end"])
        if start is None or end is None:
            raise ValueError(f"timetable entry without start/end: {entry!r}")
        # another user's job comes without id and name: busy capacity, nothing more
        label = f"{entry.get('job_id', '?')} {entry.get('name', '')}".strip() or "(busy)"
        if entry.get("reason"):
            label += f" [{entry['reason']}]"
        return cls(label=label, state=str(entry.get("state", "")), start=start, end=end)


def _bar_char(state: str) -> str:
    try:
        js = JobState(state)
    except ValueError:
        return BAR_PLANNED
    if js.is_terminal():
        return BAR_DONE
    return BAR_ACTIVE if js.has_cluster() else BAR_PLANNED


def gantt(
    entries: Sequence[GanttEntry],
    now: datetime,
    width: int = 60,
    tz: tzinfo | None = None,
) -> str:
    """A Gantt chart in unicode blocks: one row per job, a time axis and a ``now`` marker.

    ``█`` holds a cluster, ``▒`` is planned, ``│`` marks now.  Every bar gets at
    least one cell, so short jobs stay visible.
    """
    if not entries:
        return "(timetable is empty)"
    now = as_datetime(now)  # type: ignore[assignment]
    rows = sorted(entries, key=lambda e: (e.start, e.end, e.label))
    t0 = min(min(e.start for e in rows), now)
    t1 = max(max(e.end for e in rows), now)
    span_s = max((t1 - t0).total_seconds(), 1.0)
    cell_s = span_s / width

    def col(t: datetime) -> int:
        return min(width - 1, max(0, math.floor((t - t0).total_seconds() / cell_s)))

    now_col = col(now)
    label_w = min(32, max(len(e.label) for e in rows))
    state_w = max(len(e.state) for e in rows)
    pad = " " * (label_w + 2 + state_w + 2)
    lines = []
    for e in rows:
        cells = [" "] * width
        first = col(e.start)
        last = max(first, math.ceil((e.end - t0).total_seconds() / cell_s) - 1)
        last = min(last, width - 1)
        for i in range(first, last + 1):
            cells[i] = _bar_char(e.state)
        if cells[now_col] == " ":
            cells[now_col] = NOW_MARK
        label = e.label if len(e.label) <= label_w else e.label[: label_w - 1] + "…"
        lines.append(f"{label.ljust(label_w)}  {e.state.ljust(state_w)}  {''.join(cells)}".rstrip())

    axis = ["─"] * width
    axis[now_col] = "┴"
    lines.append(pad + "".join(axis))
    lines.append(pad + _tick_labels(t0, t1, now, now_col, width, tz))
    lines.append(
        f"{BAR_ACTIVE} running  {BAR_PLANNED} planned  {NOW_MARK} now "
        f"({format_when(now, now, tz)})  one cell = {format_duration(cell_s)}"
    )
    return "\n".join(lines)


def _tick_labels(
    t0: datetime, t1: datetime, now: datetime, now_col: int, width: int, tz: tzinfo | None
) -> str:
    """Start and end times under the axis ends, 'now' under its marker where it fits."""
    fmt = "%H:%M" if (t1 - t0).total_seconds() < 86400 else "%m-%d %H:%M"
    left = t0.astimezone(tz).strftime(fmt)
    right = t1.astimezone(tz).strftime(fmt)
    line = [" "] * width
    line[: len(left)] = left
    start_right = max(len(left) + 1, width - len(right))
    line = line[:start_right] + list(right)
    now_text = "now"
    pos = now_col - len(now_text) // 2
    if pos > len(left) and pos + len(now_text) < start_right:
        line[pos : pos + len(now_text)] = now_text
    return "".join(line).rstrip()
