"""The job state machine: every (old, new) pair checked against the documented diagram."""

from __future__ import annotations

import itertools

import pytest

from skyport.errors import ConflictError
from skyport.lifecycle import can_transition, check_transition
from skyport.models import JobState as S

HAPPY_PATH = [
    S.QUEUED,
    S.SCHEDULED,
    S.PROVISIONING,
    S.STAGING_IN,
    S.RUNNING,
    S.STAGING_OUT,
    S.SUCCEEDED,
]

# Written out from the module's diagram, so a change to the table shows up here.
EXPECTED = {
    S.QUEUED: {S.SCHEDULED, S.CANCELLED, S.FAILED},
    S.SCHEDULED: {S.PROVISIONING, S.QUEUED, S.CANCELLED, S.FAILED},
    S.PROVISIONING: {S.STAGING_IN, S.QUEUED, S.CANCELLED, S.FAILED},
    S.STAGING_IN: {S.RUNNING, S.QUEUED, S.TIMEOUT, S.CANCELLED, S.FAILED},
    S.RUNNING: {S.STAGING_OUT, S.QUEUED, S.TIMEOUT, S.CANCELLED, S.FAILED},
    S.STAGING_OUT: {S.SUCCEEDED, S.QUEUED, S.TIMEOUT, S.CANCELLED, S.FAILED},
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_transition_table(old: S, new: S) -> None:
    allowed = new in EXPECTED.get(old, set())
    assert can_transition(old, new) is allowed
    if allowed:
        check_transition("j1", old, new)
    else:
        with pytest.raises(ConflictError, match=f"job j1 is {old.value}: it cannot become"):
            check_transition("j1", old, new)


def test_happy_path() -> None:
    for old, new in itertools.pairwise(HAPPY_PATH):
        assert can_transition(old, new)


@pytest.mark.parametrize("terminal", [s for s in S if s.is_terminal()])
def test_terminal_states_are_final(terminal: S) -> None:
    assert not any(can_transition(terminal, new) for new in S)


def test_no_state_moves_to_itself() -> None:
    assert not any(can_transition(s, s) for s in S)


def test_skipping_steps_is_refused() -> None:
    assert not can_transition(S.QUEUED, S.RUNNING)
    assert not can_transition(S.QUEUED, S.SUCCEEDED)
    assert not can_transition(S.RUNNING, S.SUCCEEDED)  # outputs are staged out first
    assert not can_transition(S.QUEUED, S.TIMEOUT)  # a queued job's clock is not running
