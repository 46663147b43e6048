"""One command per Core call: each names a CoreService coroutine whose arguments are its fields."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any

import pytest

from skyport.core import commands
from skyport.core.budget_desk import BudgetDesk
from skyport.core.commands import BudgetCommand, Command, LocalCore
from skyport.core.service import CoreService


def _all(cls: type[Command]) -> list[type[Command]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all(sub)]
    return out


# every concrete command (a base such as BudgetCommand names no handler of its own)
COMMANDS = [c for c in _all(Command) if c.__module__ == commands.__name__
            and hasattr(c, "handler")]


def _runner(cls: type[Command]) -> type:
    """The class whose method runs the command: the budget desk's, or the Core service's."""
    return BudgetDesk if issubclass(cls, BudgetCommand) else CoreService


def test_there_is_a_command_per_call() -> None:
    assert len(COMMANDS) >= 30
    assert len({c.handler for c in COMMANDS}) == len(COMMANDS)  # one command per handler


@pytest.mark.parametrize("cls", COMMANDS, ids=lambda c: c.__name__)
def test_a_command_matches_its_handler(cls: type[Command]) -> None:
    handler = getattr(_runner(cls), cls.handler, None)
    assert handler is not None, f"{_runner(cls).__name__} has no {cls.handler}"
    assert inspect.iscoroutinefunction(handler)
    params = list(inspect.signature(handler).parameters)[1:]  # without self
    required = [p for p, v in list(inspect.signature(handler).parameters.items())[1:]
                if v.default is inspect.Parameter.empty]
    fields = [f.name for f in dataclasses.fields(cls)]
    assert fields == params[:len(fields)] and len(fields) >= len(required)


def test_local_core_runs_the_named_method_with_the_fields() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    class Service:
        async def cancel(self, who: Any, job_id: str) -> str:
            seen.append(("cancel", {"who": who, "job_id": job_id}))
            return "done"

    got = asyncio.run(LocalCore(Service()).execute(  # type: ignore[arg-type]
        commands.Cancel("alice", "j1")))  # type: ignore[arg-type]
    assert got == "done" and seen == [("cancel", {"who": "alice", "job_id": "j1"})]


def test_a_token_never_shows_in_a_command_repr() -> None:
    cmd = commands.AgentHeartbeat("j1", "secret-token", 0)
    assert "secret-token" not in repr(cmd)
