"""Plugins found by name: one helper for gates and policies.

A plugin is a class named ``module:Class`` in an entry-point group (an
installed package registers it).  The built-in ones are also known without
installed entry points (a source checkout, a test run), so a registry falls
back on a table of them; an installed entry point of the same name wins.
Nothing is imported until a name is asked for, and a miss says which names
exist and how a third-party plugin is made known (fsspec's ``known_implementations``
works the same way).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Generic, TypeVar, cast

__all__ = ["PluginRegistry"]

T = TypeVar("T")


@dataclass(frozen=True)
class PluginRegistry(Generic[T]):
    """The plugins of one entry-point group.

    ``kind`` names a plugin in messages ("gate type", "policy"); ``base`` is the
    class every plugin must derive from; ``error`` builds the exception a miss
    raises (each caller keeps its own exception class).
    """

    group: str
    kind: str
    base: type  # type[T] for an abstract T is refused by mypy: the check below is the type
    builtins: Mapping[str, str]
    error: Callable[[str], Exception]
    field_name: str = field(default="")

    def known(self) -> dict[str, str]:
        """Every name with the ``module:Class`` it loads, built-ins included, sorted."""
        known = dict(self.builtins)
        for ep in entry_points(group=self.group):
            known[ep.name] = ep.value
        return dict(sorted(known.items()))

    def load(self, name: str) -> type[T]:
        """The class registered under ``name``; ``error(...)`` when there is none."""
        known = self.known()
        target = known.get(name)
        label = f"{self.field_name or self.kind}={name!r}"
        if target is None:
            raise self.error(
                f"{label} is not a known {self.kind}; known {_plural(self.kind)}: "
                f"{', '.join(known)} (a third-party {self.kind} is found once the package "
                f"that registers it in the entry-point group {self.group!r} is installed)")
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            # most often an optional dependency of the plugin that is not installed
            raise self.error(
                f"{label} points at {target!r}, which cannot be imported: {exc} (is the "
                "package that provides it, and its dependencies, installed?)") from exc
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise self.error(
                f"{label} points at {target!r}, which is not a {self.base.__name__}")
        return cast(type[T], cls)


def _plural(kind: str) -> str:
    return kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
