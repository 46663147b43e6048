"""Find policies by name.

Policies are plugins in the entry-point group ``skyport.policies``. The
built-in ones are also known without installed entry points (a source
checkout, a test run), so the registry falls back on a table of them; an
installed entry point of the same name wins.
"""

from __future__ import annotations

from typing import Any

from skyport.registry import PluginRegistry
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


_REGISTRY: PluginRegistry[Policy] = PluginRegistry(
    group=ENTRY_POINT_GROUP, kind="policy", base=Policy, builtins=BUILTIN_POLICIES,
    error=UnknownPolicyError)


def known_policies() -> dict[str, str]:
    """Every policy name with the ``module:Class`` it loads, built-ins included."""
    return _REGISTRY.known()


def policy_class(name: str) -> type[Policy]:
    """The class registered under ``name``."""
    return _REGISTRY.load(name)


def load_policy(name: str, **options: Any) -> Policy:
    """An instance of the policy registered under ``name``, configured with ``options``."""
    return policy_class(name)(**options)
