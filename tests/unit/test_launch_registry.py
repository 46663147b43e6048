"""The Core's in-memory launch registry."""

from __future__ import annotations

import pytest

from skyport.core.launches import LaunchRegistry
from skyport.errors import NotFoundError, ValidationError


def test_a_launch_goes_from_node0_to_node_k_and_back() -> None:
    reg = LaunchRegistry()
    la = reg.create("j", 1, 2, ["sh", "-c", "x"], {}, "/w")
    assert reg.claim("j", 0) == {"start": [], "cancel": []}
    assert reg.has_work("j", 1)
    assert [o["launch_id"] for o in reg.claim("j", 1)["start"]] == [la.id]
    assert reg.append("j", la.id, 1, "stdout", 0, b"hel") == 3
    assert reg.append("j", la.id, 1, "stdout", 0, b"hello") == 5  # resent: stored once
    reg.finish("j", la.id, 1, 3)
    got = reg.read("j", la.id, {"stdout": 0, "stderr": 0})
    assert got["stdout"] == b"hello" and got["exit_code"] is None  # not all read yet
    got = reg.read("j", la.id, {"stdout": 5, "stderr": 0})
    assert got["exit_code"] == 3
    with pytest.raises(NotFoundError):  # delivered, then forgotten
        reg.read("j", la.id, {})


def test_cancel_reaches_the_running_node_once_and_bad_input_is_refused() -> None:
    reg = LaunchRegistry()
    la = reg.create("j", 1, 2, ["x"], {}, "")
    reg.claim("j", 1)
    reg.cancel("j", la.id)
    assert reg.claim("j", 1)["cancel"] == [la.id]
    assert reg.claim("j", 1)["cancel"] == []
    with pytest.raises(ValidationError):
        reg.create("j", 2, 2, ["x"], {}, "")
    with pytest.raises(ValidationError):
        reg.append("j", la.id, 0, "stdout", 0, b"")  # only its own node reports
    reg.drop_job("j")
    with pytest.raises(NotFoundError):
        reg.get("j", la.id)
