"""The ``skyport`` console command (click), built on the Python client.

One module per group of commands: ``jobs`` (submit, jobs, show, logs, wait,
cancel, fetch), ``cluster`` (status, gates, timetable), ``budget`` (budget,
cost), ``admin`` (init, start, stop, user add, whoami); ``app`` holds what they share and
``render``/``plot`` draw tables and charts.
"""

from __future__ import annotations

from skyport.cli.app import cli  # its commands' modules are imported when asked for


def main() -> None:
    cli(prog_name="skyport")


__all__ = ["cli", "main"]
