"""Money: ``skyport budget`` (show, ``set``) and ``skyport cost`` (a table or a bar chart)."""

from __future__ import annotations

from typing import Any

import click

from skyport.cli import render
from skyport.cli.app import Output, cli, command, fail, get_client
from skyport.errors import SkyportError
from skyport.protocol import BudgetView

PERIODS = ("month", "week", "total")
_PER = {"month": "per month", "week": "per week", "total": "in total"}


def _money(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _when(value: Any) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _budget_text(b: BudgetView) -> str:
    if b.limit is None:
        pairs: list[tuple[str, Any]] = [
            ("user", b.user), ("limit", "none (no budget: nothing waits for money)"),
            ("spent", f"{_money(b.spent)} since {_when(b.since)}"),
            ("committed", _money(b.committed))]
    else:
        pairs = [
            ("user", b.user),
            ("limit", f"{_money(b.limit)} {_PER.get(b.period or '', '')}".rstrip()),
            ("since", _when(b.since) or "ever"),
            ("spent", _money(b.spent)),
            ("committed", _money(b.committed)),
            ("remaining", _money(b.remaining)),
            ("waiting", ", ".join(b.waiting) or None),
            ("set by", f"{b.set_by} at {_when(b.set_at)}" if b.set_by else None),
        ]
    return render.key_values(pairs)


@cli.group("budget", invoke_without_command=True)
@click.option("--user", "target", default=None, metavar="NAME",
              help="whose budget (admins; default: your own)")
@click.option("--json", "json_output", is_flag=True, help="print one JSON document")
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.pass_context
def budget_group(ctx: click.Context, target: str | None, json_output: bool,
                 debug: bool) -> None:
    """Your budget: limit, period, spent this period, committed, remaining.

    A job's worst case (nodes x the dearest node-hour it could get x its time
    limit) is committed while it is queued or running; a job that would pass
    the limit waits (reason Budget). 'skyport budget set' (admins) sets one.
    """
    if ctx.invoked_subcommand is not None:
        return
    out = Output(json_output)
    try:
        b = get_client().budget(target)
    except (SkyportError, OSError) as exc:
        if debug:
            raise
        fail(out, exc)
        return
    out.emit(b, lambda: _budget_text(b))


@command(budget_group, "set")
@click.argument("user")
@click.argument("amount", type=float)
@click.option("--period", type=click.Choice(PERIODS), default="month", show_default=True,
              help="calendar period (UTC) the amount is for; 'total': ever")
def budget_set_cmd(out: Output, user: str, amount: float, period: str) -> None:
    """Admins: USER may spend AMOUNT per period; waiting jobs are planned again at once."""
    b = get_client().set_budget(user, amount, period)
    out.emit(b, lambda: _budget_text(b))


@command(cli, "cost")
@click.option("--user", "target", default=None, metavar="NAME",
              help="whose jobs (default: yours; admins: everyone's)")
@click.option("--since", default=None, metavar="DATE",
              help="from this date (YYYY-MM-DD, UTC) or ISO time; default: this month's 1st")
@click.option("--by", type=click.Choice(("gate", "user", "day")), default="gate",
              show_default=True, help="one row per gate, user or UTC day")
@click.option("--output", "picture", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="also draw it as a bar chart to FILE (.png, .svg or .pdf)")
def cost_cmd(out: Output, target: str | None, since: str | None, by: str,
             picture: str | None) -> None:
    """What clusters cost while your jobs ran: a table by gate, user or day."""
    report = get_client().cost(target, since, by)
    written = None
    if picture:
        from skyport.cli.plot import write_cost_picture

        written = write_cost_picture(report, picture)

    def text() -> str:
        whose = f"user {report.user}" if report.user else "every user"
        head = f"cost of {whose} since {_when(report.since) or 'ever'}, by {report.by}"
        rows = [(r.key, _money(r.cost), f"{r.node_hours:.4f}", r.jobs) for r in report.rows]
        lines = [head, render.table((report.by.upper(), "COST", "NODE-HOURS", "JOBS"),
                                    [*rows, ("total", _money(report.total), None, None)])]
        if written is not None:
            lines.append(f"wrote {written}")
        return "\n".join(lines)

    out.emit({**report.model_dump(mode="json"), "picture": str(written) if written else None},
             text)


__all__ = ["budget_group", "budget_set_cmd", "cost_cmd"]
