"""The ``skyport`` command group and what every command shares.

Every command takes ``--json`` (print exactly one JSON document on stdout)
and ``--debug`` (let errors raise, with their traceback).  Without
``--debug`` a ``SkyportError`` (or an ``OSError``, e.g. an unwritable
destination) becomes ONE line ``error: <message>`` on stderr and exit
status 1; with ``--json`` the error is also the JSON document on stdout.
Usage errors stay click's (exit status 2).

Commands reach the control plane through ``client_factory(home, user)``;
tests replace it with a factory that returns a ``Client`` on a mock
transport.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import click

from skyport.cli import render
from skyport.client import Client, connect
from skyport.config import StateDir
from skyport.errors import SkyportError

F = TypeVar("F", bound=Callable[..., Any])

client_factory: Callable[[str | None, str | None], Client] = connect


# which module defines each command: `skyport submit` imports the jobs module alone, not
# the relay's, the admin's (and their imports) too; tests/unit/test_cli_lazy.py keeps it whole
COMMAND_MODULES = {
    "init": "admin", "start": "admin", "stop": "admin", "user": "admin", "whoami": "admin",
    "budget": "budget", "cost": "budget",
    "status": "cluster", "gates": "cluster", "clusters": "cluster", "timetable": "cluster",
    "submit": "jobs", "jobs": "jobs", "show": "jobs", "logs": "jobs", "wait": "jobs",
    "cancel": "jobs", "hold": "jobs", "release": "jobs", "fetch": "jobs",
    "mpiexec": "launch", "bcast": "launch",
    "checkpoint": "recovery", "checkpoints": "recovery", "requeue": "recovery",
    "debug": "recovery",
    "forward": "relay", "jupyter": "relay",
}


class LazyGroup(click.Group):
    """The top group: a command's module is imported when that command is asked for."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            importlib.import_module(f"skyport.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_all()
        return super().list_commands(ctx)


def load_all() -> None:
    """Every command's module (``--help``, and what needs the whole table)."""
    for module in sorted(set(COMMAND_MODULES.values())):
        importlib.import_module(f"skyport.cli.{module}")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    envvar="SKYPORT_HOME",
    default=None,
    metavar="DIR",
    help="state directory of the control plane (default $SKYPORT_HOME or ~/.skyport)",
)
@click.option(
    "--user",
    envvar="SKYPORT_USER",
    default=None,
    metavar="NAME",
    help="whose certificate to use (default $SKYPORT_USER or admin)",
)
@click.version_option("0.1.0", prog_name="skyport")
@click.pass_context
def cli(ctx: click.Context, home: str | None, user: str | None) -> None:
    """Sky Port: run HPC jobs on clusters built for them, on the cloud you choose."""
    ctx.obj = {"home": home, "user": user}


@dataclass(frozen=True)
class Output:
    """Where a command's answer goes: text for people or one JSON document."""

    json: bool

    def emit(self, document: Any, text: str | Callable[[], str]) -> None:
        if self.json:
            click.echo(to_json(document))
        else:
            # every text answer passes here: no control character reaches the terminal
            click.echo(render.safe(text() if callable(text) else text))


def to_json(document: Any) -> str:
    return json.dumps(document, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


def command(group: click.Group, name: str | None = None, **attrs: Any) -> Callable[[F], F]:
    """``group.command`` plus ``--json``/``--debug``; the function gets ``out`` first."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def callback(*args: Any, json_output: bool, debug: bool, **kwargs: Any) -> Any:
            out = Output(json_output)
            try:
                return fn(out, *args, **kwargs)
            except (SkyportError, OSError) as exc:
                if debug:
                    raise
                fail(out, exc)

        callback.__click_params__ = list(getattr(fn, "__click_params__", []))  # type: ignore[attr-defined]
        cmd = click.option("--debug", is_flag=True, help="show tracebacks")(callback)
        cmd = click.option("--json", "json_output", is_flag=True, help="print one JSON document")(
            cmd
        )
        return group.command(name, **attrs)(cmd)  # type: ignore[return-value]

    return decorate


def one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, SkyportError) else str(exc)
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or repr(exc)


def fail(out: Output, exc: BaseException) -> None:
    """Report ``exc`` the one-line way and exit with status 1."""
    if out.json:
        # a Sky Port error keeps its fields (ErrorBody: field, value, allowed, ...)
        body = exc.to_dict() if isinstance(exc, SkyportError) else {"error": type(exc).__name__}
        click.echo(to_json({**body, "message": one_line(exc)}))
    click.echo(render.safe(f"error: {one_line(exc)}"), err=True)
    click.get_current_context().exit(1)


def settings() -> dict[str, Any]:
    obj = click.get_current_context().find_root().obj
    return obj if isinstance(obj, dict) else {}


def get_client() -> Client:
    """A client for the chosen control plane, closed when the command ends."""
    opts = settings()
    client = client_factory(opts.get("home"), opts.get("user"))
    click.get_current_context().call_on_close(client.close)
    return client


def state_dir() -> StateDir:
    return StateDir.find(settings().get("home"))
