"""Find policies by name.

Policies are plugins in the entry-point group ``skyport.policies``. The
built-in ones are also known without installed entry points (a source
checkout, a test run), so the registry falls back on a table of them; an
installed entry point of the same name wins.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from skyport.timetable.errors import UnknownPolicyError
from skyport.timetable.policy import Policy

__all__ = ["BUILTIN_POLICIES", "ENTRY_POINT_GROUP", "known_policies", "load_policy"]

ENTRY_POINT_GROUP = "skyport.policies"

BUILTIN_POLICIES: dict[str, str] = {
    "fcfs": "policies.fcfs:FcfsPolicy",
    "sjf": "policies.sjf:SjfPolicy",
    "easy": "policies.easy:EasyPolicy",
    "easy-sjf": "policies.easy:EasySjfPolicy",
    "conservative": "policies.conservative:ConservativePolicy",
    "fairshare": "policies.fairshare:FairSharePolicy",
    "easy-slowdown": "policies.slowdown:SlowdownPolicy",
    "sky": "policies.sky:SkyPolicy",
}


def known_policies() -> dict[str, str]:
    """Every policy name with the ``module:Class`` it loads, built-ins included."""
    known = dict(BUILTIN_POLICIES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        known[ep.name] = ep.value
    return dict(sorted(known.items()))


def policy_class(name: str) -> type[Policy]:
    """The class registered under ``name``."""
    known = known_policies()
    target = known.get(name)
    if target is None:
        raise UnknownPolicyError(
            f"policy={name!r} is not a known policy; known policies: {', '.join(known)}"
        )
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownPolicyError(
            f"policy={name!r} points at {target!r}, which cannot be imported: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise UnknownPolicyError(f"policy={name!r} points at {target!r}, which is not a Policy")
    return cls


def load_policy(name: str, **options: Any) -> Policy:
    """An instance of the policy registered under ``name``, configured with ``options``."""
    return policy_class(name)(**options)
