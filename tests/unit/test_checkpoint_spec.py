"""Checkpoint directives, the --signal parser and the storage guard."""

from __future__ import annotations

import pytest

from skyport import checkpoint
from skyport.api.routes.agents import check_agent_checkpoint_path
from skyport.errors import PermissionDeniedError, ScriptError
from skyport.script import build_spec


def test_directives_set_the_checkpoint_fields() -> None:
    spec = build_spec("#!/bin/bash\n#SKYPORT --checkpoint-every=5m --max-restarts=3\n"
                      "#SKYPORT --signal=SIGUSR1@60\ntrue\n")
    assert (spec.checkpoint_every_s, spec.max_restarts, spec.signal) == (300, 3, "SIGUSR1@60")
    plain = build_spec("#!/bin/bash\ntrue\n")
    assert (plain.checkpoint_every_s, plain.max_restarts, plain.signal) == (None, None, None)


@pytest.mark.parametrize("text, expected", [
    ("SIGUSR1@60", ("SIGUSR1", 60)), ("USR2", ("SIGUSR2", 60)), ("10@5", ("SIGUSR1", 5)),
    ("sigterm@0", ("SIGTERM", 0)),
])
def test_parse_signal(text: str, expected: tuple[str, int]) -> None:
    assert checkpoint.parse_signal(text) == expected


@pytest.mark.parametrize("bad", ["SIGKILL@5", "NOPE", "USR1@x", "USR1@-1"])
def test_bad_signal_is_refused_with_its_line(bad: str) -> None:
    with pytest.raises(ScriptError) as info:
        build_spec(f"#!/bin/bash\n#SKYPORT --signal={bad}\ntrue\n")
    assert info.value.line == 2


def test_bad_checkpoint_interval_and_restarts_are_refused() -> None:
    with pytest.raises(ScriptError):
        build_spec("#!/bin/bash\n#SKYPORT --checkpoint-every=soon\ntrue\n")
    with pytest.raises(ScriptError):
        build_spec("#!/bin/bash\n#SKYPORT --max-restarts=-1\ntrue\n")


def test_agents_cannot_move_the_latest_pointer() -> None:
    check_agent_checkpoint_path("checkpoints/v3/shared/model.pt")
    check_agent_checkpoint_path("outputs/result.txt")
    for path in ("checkpoints/latest.json", "checkpoints/other"):
        with pytest.raises(PermissionDeniedError):
            check_agent_checkpoint_path(path)


def test_save_and_load_outside_a_job_do_nothing(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SKYPORT_CHECKPOINT_DIR", raising=False)
    assert checkpoint.save({"x": 1}) is None
    assert checkpoint.load(default="d") == "d"


def test_save_writes_atomically_then_load_reads_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SKYPORT_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.delenv("SKYPORT_LAUNCH_SOCKET", raising=False)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.save({"step": 7})  # written, but no agent to store it
    assert checkpoint.load() == {"step": 7}
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.STATE_FILE]
