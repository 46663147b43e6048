"""`skyport CMD` imports CMD's module only; the table that says where each command lives
is whole and right."""

from __future__ import annotations

from skyport.cli.app import COMMAND_MODULES, cli, load_all


def test_the_table_names_every_command_and_its_module() -> None:
    load_all()
    assert set(COMMAND_MODULES) == set(cli.commands)
    for name, command in cli.commands.items():
        callback = command.callback
        while hasattr(callback, "__wrapped__"):
            callback = callback.__wrapped__
        assert callback is not None
        assert callback.__module__ == f"skyport.cli.{COMMAND_MODULES[name]}", name

