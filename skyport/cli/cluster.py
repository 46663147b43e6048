"""Control-plane views: status, gates, timetable."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

import click

from skyport.cli import render
from skyport.cli.app import Output, cli, command, get_client
from skyport.protocol import CapacityView
from skyport.units import format_duration


def _pairs(mapping: Mapping[str, Any] | None) -> str:
    if not mapping:
        return "-"
    return " ".join(f"{k}={v}" for k, v in mapping.items())


def _capacity(cap: CapacityView | None) -> str:
    if cap is None:
        return "-"
    text = f"cpus {cap.free_cpus}/{cap.total_cpus} free"
    if cap.total_gpus:
        text += f", gpus {cap.free_gpus}/{cap.total_gpus} free"
    return text


@command(cli, "status")
def status_cmd(out: Output) -> None:
    """The control plane: version, policy, storage, gates, job counts."""
    data = get_client().status()

    def text() -> str:
        counts = {k: v for k, v in data.counts.items() if v}
        return render.key_values(
            [
                ("version", data.version),
                ("policy", data.policy),
                ("started", data.started_at),
                ("storage", data.storage_url),
                ("gates", ", ".join(g.name for g in data.gates) or "-"),
                ("jobs", _pairs(counts) if counts else "none"),
            ]
        )

    out.emit(data, text)


@command(cli, "gates")
def gates_cmd(out: Output) -> None:
    """The configured gates, their flavors and capacity."""
    gates = get_client().gates()
    rows = [
        (
            g.name,
            g.type or "-",
            g.healthy,
            ", ".join(f.name for f in g.flavors) or "-",
            _capacity(g.capacity) if g.healthy else g.error or "-",
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
        (c.cluster_id, c.job_id, c.gate, c.flavor, c.nodes, format_duration(int(c.age_s)),
         c.state, f"{c.cost:.4f}")
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
    entries = [render.GanttEntry.from_timetable(e.model_dump(mode="json")) for e in data.entries]
    now = render.as_datetime(data.now) or _utcnow()
    written = None
    if picture:
        from skyport.cli.plot import write_gantt_picture

        written = write_gantt_picture(
            entries, now, picture, title=f"Sky Port timetable ({data.policy})"
        )
    columns = shutil.get_terminal_size((100, 24)).columns
    label_w = min(32, max((len(e.label) for e in entries), default=0))
    state_w = max((len(e.state) for e in entries), default=0)
    width = max(20, min(120, columns - label_w - state_w - 5))

    placed = [
        (e.job_id, e.state.value, e.gate or "-", e.flavor or "-",
         "-" if e.est_cost is None else f"{e.est_cost:.4f}", e.prefer or "-",
         e.deadline or "-")
        for e in data.entries if e.job_id
    ]

    def text() -> str:
        lines = [f"policy: {data.policy}", render.gantt(entries, now, width=width)]
        if placed:
            lines += ["", render.table(("JOB", "STATE", "GATE", "FLAVOR", "EST. COST", "PREFER",
                                        "DEADLINE"), placed)]
        if written is not None:
            lines.append(f"wrote {written}")
        return "\n".join(lines)

    out.emit({**data.model_dump(mode="json"), "picture": str(written) if written else None},
             text)


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
