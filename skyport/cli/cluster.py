"""Control-plane views: status, gates, timetable."""

from __future__ import annotations

import shutil
from typing import Any

import click

from skyport.cli import render
from skyport.cli.app import Output, cli, command, get_client
from skyport.units import format_duration


def _names(items: Any) -> str:
    if not items:
        return "-"
    return ", ".join(str(i.get("name", i)) if isinstance(i, dict) else str(i) for i in items)


def _pairs(mapping: Any) -> str:
    if not mapping:
        return "-"
    if not isinstance(mapping, dict):
        return str(mapping)
    return " ".join(f"{k}={v}" for k, v in mapping.items())


@command(cli, "status")
def status_cmd(out: Output) -> None:
    """The control plane: version, policy, storage, gates, job counts."""
    data = get_client().status()

    def text() -> str:
        counts = data.get("counts") or {}
        return render.key_values(
            [
                ("version", data.get("version")),
                ("policy", data.get("policy")),
                ("started", data.get("started_at")),
                ("storage", data.get("storage_url")),
                ("gates", _names(data.get("gates"))),
                ("jobs", _pairs({k: v for k, v in counts.items() if v}) if counts else "none"),
            ]
        )

    out.emit(data, text)


@command(cli, "gates")
def gates_cmd(out: Output) -> None:
    """The configured gates, their flavors and capacity."""
    gates = get_client().gates()
    rows = [
        (
            g.get("name"),
            g.get("type"),
            g.get("healthy"),
            _names(g.get("flavors")),
            _pairs(g.get("capacity")),
        )
        for g in gates
    ]
    out.emit(
        gates,
        lambda: (
            render.table(("NAME", "TYPE", "HEALTHY", "FLAVORS", "CAPACITY"), rows)
            if rows
            else "no gates"
        ),
    )


@command(cli, "clusters")
def clusters_cmd(out: Output) -> None:
    """Every gate's clusters: job, gate, age, state, cost so far (yours; admins: all)."""
    clusters = get_client().clusters()
    rows = [
        (c.get("cluster_id"), c.get("job_id"), c.get("gate"), c.get("flavor"), c.get("nodes"),
         format_duration(int(c.get("age_s") or 0)), c.get("state"),
         f"{float(c.get('cost') or 0):.4f}")
        for c in clusters
    ]
    out.emit(
        clusters,
        lambda: (
            render.table(("CLUSTER", "JOB", "GATE", "FLAVOR", "NODES", "AGE", "STATE", "COST"),
                         rows)
            if rows
            else "no clusters"
        ),
    )


@command(cli, "timetable")
@click.option(
    "--output",
    "picture",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="also draw it to FILE (.png, .svg or .pdf)",
)
def timetable_cmd(out: Output, picture: str | None) -> None:
    """The scheduler's plan as a Gantt chart: one row per job, a 'now' marker."""
    data = get_client().timetable()
    entries = [render.GanttEntry.from_timetable(e) for e in data.get("entries") or ()]
    now = render.as_datetime(data.get("now")) or _utcnow()
    written = None
    if picture:
        from skyport.cli.plot import write_gantt_picture

        written = write_gantt_picture(
            entries, now, picture, title=f"Sky Port timetable ({data.get('policy', '?')})"
        )
    columns = shutil.get_terminal_size((100, 24)).columns
    label_w = min(32, max((len(e.label) for e in entries), default=0))
    state_w = max((len(e.state) for e in entries), default=0)
    width = max(20, min(120, columns - label_w - state_w - 5))

    def text() -> str:
        lines = [f"policy: {data.get('policy', '-')}", render.gantt(entries, now, width=width)]
        if written is not None:
            lines.append(f"wrote {written}")
        return "\n".join(lines)

    out.emit({**data, "picture": str(written) if written else None}, text)


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
