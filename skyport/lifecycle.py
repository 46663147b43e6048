"""The job state machine: which transitions are allowed.  Pure: no I/O.

QUEUED -> SCHEDULED -> PROVISIONING -> STAGING_IN -> RUNNING -> STAGING_OUT -> SUCCEEDED
                                                                          \\-> FAILED
any non-terminal state -> CANCELLED, FAILED
RUNNING (or staging) past its time limit -> TIMEOUT
a job holding a cluster that loses it -> QUEUED again
"""

from __future__ import annotations

from skyport.errors import ConflictError
from skyport.models import JobState as S

_ALLOWED: dict[S, frozenset[S]] = {
    S.QUEUED: frozenset({S.SCHEDULED}),
    S.SCHEDULED: frozenset({S.PROVISIONING, S.QUEUED}),
    S.PROVISIONING: frozenset({S.STAGING_IN, S.QUEUED}),
    S.STAGING_IN: frozenset({S.RUNNING, S.QUEUED, S.TIMEOUT}),
    S.RUNNING: frozenset({S.STAGING_OUT, S.QUEUED, S.TIMEOUT}),
    S.STAGING_OUT: frozenset({S.SUCCEEDED, S.QUEUED, S.TIMEOUT}),
}


def can_transition(old: S, new: S) -> bool:
    if old.is_terminal():
        return False
    if new in (S.CANCELLED, S.FAILED):
        return True
    return new in _ALLOWED[old]


def check_transition(job_id: str, old: S, new: S) -> None:
    if not can_transition(old, new):
        raise ConflictError(f"job {job_id} is {old.value}: it cannot become {new.value}")
