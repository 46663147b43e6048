"""The one plugin registry helper behind gate types and policies."""

from __future__ import annotations

import pytest

from skyport.errors import ConfigError
from skyport.gate import Gate, gate_class, known_gate_types
from skyport.registry import PluginRegistry
from skyport.timetable import UnknownPolicyError, known_policies, policy_class


class Base:
    pass


class Plugin(Base):
    pass


class NotAPlugin:
    pass


def registry(builtins: dict[str, str]) -> PluginRegistry[Base]:
    return PluginRegistry(group="skyport.tests-none", kind="widget", base=Base,
                          builtins=builtins, error=ConfigError)


def test_builtins_load_lazily_by_name() -> None:
    reg = registry({"p": f"{__name__}:Plugin"})
    assert reg.known() == {"p": f"{__name__}:Plugin"}
    assert reg.load("p") is Plugin


def test_a_miss_names_what_exists_and_how_to_add_one() -> None:
    reg = registry({"b": f"{__name__}:Plugin", "a": f"{__name__}:Plugin"})
    with pytest.raises(ConfigError, match=r"widget='c' is not a known widget; known widgets: "
                       r"a, b \(.*entry-point group 'skyport.tests-none' is installed"):
        reg.load("c")


def test_an_unimportable_or_wrong_target_is_named() -> None:
    reg = registry({"gone": "no_such_module_xyz:Thing", "odd": f"{__name__}:NotAPlugin"})
    with pytest.raises(ConfigError, match="'no_such_module_xyz:Thing', which cannot be "
                       "imported.*installed"):
        reg.load("gone")
    with pytest.raises(ConfigError, match="which is not a Base"):
        reg.load("odd")


def test_gates_and_policies_share_it() -> None:
    assert {"local", "libcloud", "chaos", "ray"} <= set(known_gate_types())
    assert issubclass(gate_class("local"), Gate)
    with pytest.raises(ConfigError, match="type='nope' is not a known gate type; known gate "
                       "types: .*local"):
        gate_class("nope")
    assert "fcfs" in known_policies() and policy_class("fcfs").__name__ == "FcfsPolicy"
    with pytest.raises(UnknownPolicyError, match="policy='nope' is not a known policy"):
        policy_class("nope")
