"""A new state directory plans with EASY backfilling; an existing one keeps its policy."""

from __future__ import annotations

import json
from pathlib import Path

from skyport.config import StateDir
from skyport.controlplane import DEFAULT_POLICY, init_state
from skyport.timetable import Capability, load_policy


def test_a_new_state_directory_backfills(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home")
    init_state(state, local_cpus=1)
    assert state.load_config().policy == DEFAULT_POLICY == "easy-sjf"
    assert Capability.BACKFILL in load_policy(DEFAULT_POLICY).capabilities


def test_an_existing_state_directory_keeps_its_policy(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "home")
    init_state(state, local_cpus=1, policy="fcfs")  # as every earlier version wrote it
    saved = json.loads(state.config_path.read_text())
    assert saved["policy"] == "fcfs"
    assert state.load_config().policy == "fcfs"
    # a config.json written by hand without a policy keeps the old default too
    del saved["policy"]
    state.config_path.write_text(json.dumps(saved))
    assert state.load_config().policy == "fcfs"
