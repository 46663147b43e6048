"""The timetable as a picture (``skyport timetable --output plan.png``), with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from skyport.cli.render import GanttEntry, as_datetime
from skyport.errors import ValidationError
from skyport.models import JobState
from skyport.protocol import CostView

PICTURE_SUFFIXES = (".png", ".svg", ".pdf")

_COLORS = {"active": "#1f77b4", "planned": "#aec7e8", "done": "#c7c7c7"}


def _kind(state: str) -> str:
    try:
        js = JobState(state)
    except ValueError:
        return "planned"
    if js.is_terminal():
        return "done"
    return "active" if js.has_cluster() else "planned"


def _checked(path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() not in PICTURE_SUFFIXES:
        allowed = "a file ending in " + ", ".join(PICTURE_SUFFIXES)
        raise ValidationError("--output", str(path), allowed)
    return out


def write_cost_picture(report: CostView, path: str | Path) -> Path:
    """One bar per gate, user or day of a cost report (``skyport cost --output``)."""
    out = _checked(path)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    keys = [r.key for r in report.rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(keys) + 2.0), 4.0))
    try:
        ax.bar(range(len(keys)), [r.cost for r in report.rows], color=_COLORS["active"],
               edgecolor="black", linewidth=0.5)
        ax.set_xticks(range(len(keys)), keys, rotation=45 if len(keys) > 6 else 0,
                      ha="right" if len(keys) > 6 else "center")
        whose = f"user {report.user}" if report.user else "every user"
        since = report.since.strftime("%Y-%m-%d") if report.since else "ever"
        ax.set_title(f"Sky Port cost of {whose} since {since}, by {report.by} "
                     f"(total {report.total:.2f})")
        ax.set_ylabel("cost")
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


def write_gantt_picture(
    entries: Sequence[GanttEntry],
    now: datetime,
    path: str | Path,
    title: str = "Sky Port timetable",
) -> Path:
    """Draw one horizontal bar per job and a line at ``now``; the suffix picks the format."""
    out = Path(path)
    if out.suffix.lower() not in PICTURE_SUFFIXES:
        allowed = "a file ending in " + ", ".join(PICTURE_SUFFIXES)
        raise ValidationError("--output", str(path), allowed)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = sorted(entries, key=lambda e: (e.start, e.end, e.label))
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.4 * len(rows) + 1.5)))
    try:
        for i, e in enumerate(rows):
            start = mdates.date2num(e.start)
            ax.barh(
                i,
                mdates.date2num(e.end) - start,
                left=start,
                height=0.6,
                color=_COLORS[_kind(e.state)],
                edgecolor="black",
                linewidth=0.5,
            )
        ax.axvline(mdates.date2num(as_datetime(now)), color="red", linewidth=1.2)
        ax.set_yticks(range(len(rows)), [e.label for e in rows])
        ax.invert_yaxis()
        ax.xaxis_date()
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.set_title(title)
        ax.set_xlabel("time (UTC)")
        ax.legend(
            handles=[
                Patch(color=_COLORS["active"], label="running"),
                Patch(color=_COLORS["planned"], label="planned"),
                Patch(color="red", label="now"),
            ],
            loc="lower right",
        )
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
