"""Runtime predictions from each user's recently ended jobs.

Users' requested times (``--time``) are poor estimates: most jobs end long
before them. Tsafrir, Etsion and Feitelson ("Backfilling using
system-generated predictions rather than user runtime estimates", IEEE TPDS
2007) plan with the average runtime of the user's last two jobs instead and
raise a prediction that a running job outlives. This module is that
predictor, pure: the history is an input (``Snapshot.history``), kept by the
caller from the jobs it has seen end (:class:`RuntimeHistory`).

Rules, all in seconds:

* a user with no history is predicted their requested time, and so is a
  user whose last jobs each ran at least ``TRUST_REQUESTS_AT`` (90 %) of
  what they requested (their requests are accurate);
* otherwise the mean runtime of their last ``depth`` ended jobs (2 by
  default) that asked for the same time as this one, or, if none did, of
  their last ``depth`` ended jobs; never more than the job's requested time
  and never less than ``MIN_PREDICTION_S``;
* a running job that has outlived its prediction is re-predicted to end at
  the next step of :data:`CORRECTION_STEPS_S` past its elapsed time, capped
  at its requested time (where it is killed).

Predictions only plan: a job is still killed at its requested time.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skyport.timetable.snapshot import Ended

__all__ = [
    "CORRECTION_STEPS_S",
    "MIN_PREDICTION_S",
    "TRUST_REQUESTS_AT",
    "RuntimeHistory",
    "correct",
    "owner_mean",
    "owner_means",
    "predict",
    "same_request_mean",
]

MIN_PREDICTION_S = 1.0

TRUST_REQUESTS_AT = 0.9
"""An owner whose last jobs each ran at least this share of their request is taken at their word."""

# Tsafrir et al.'s correction ladder: a job past its prediction is expected
# to end at the next of these elapsed times (then its requested time).
CORRECTION_STEPS_S: tuple[float, ...] = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    18_000.0,
    36_000.0,
    72_000.0,
    180_000.0,
    360_000.0,
)


def owner_means(
    history: Mapping[str, Sequence[Ended]], depth: int = 2, trust: float = TRUST_REQUESTS_AT
) -> dict[str, float]:
    """Each owner's mean runtime over their last ``depth`` ended jobs.

    Owners with no history are left out, and so are owners whose last jobs
    each ran at least ``trust`` of what they requested: their requests are
    accurate, and their next job is predicted its own requested time.
    """
    out: dict[str, float] = {}
    for owner, ended in history.items():
        mean = owner_mean(ended, depth, trust)
        if mean is not None:
            out[owner] = mean
    return out


def owner_mean(
    ended: Sequence[Ended], depth: int = 2, trust: float = TRUST_REQUESTS_AT
) -> float | None:
    """One owner's entry of :func:`owner_means`; None where requested times are used."""
    recent = ended[-depth:]
    if not recent or all(e.runtime_s >= trust * e.requested_s for e in recent):
        return None
    return sum(e.runtime_s for e in recent) / len(recent)


def same_request_mean(
    ended: Sequence[Ended],
    requested_s: float,
    depth: int = 2,
    trust: float = TRUST_REQUESTS_AT,
) -> tuple[bool, float | None]:
    """The owner's mean over their last ``depth`` ended jobs that asked for ``requested_s``.

    Jobs an owner submits with the same time limit are often runs of the
    same program, so they predict each other better than the owner's other
    jobs do. Returns ``(found, mean)``: ``found`` is False when no ended job
    asked for that time (fall back on :func:`owner_mean`); ``mean`` is None
    when those jobs ran close to their request (trust it).
    """
    same = [e for e in ended if e.requested_s == requested_s][-depth:]
    if not same:
        return False, None
    return True, owner_mean(same, depth, trust)


def predict(mean_s: float | None, requested_s: float) -> float:
    """The planned runtime of a job whose owner's recent mean is ``mean_s`` (None: no history)."""
    if mean_s is None or mean_s >= requested_s:
        return requested_s
    return mean_s if mean_s > MIN_PREDICTION_S else min(MIN_PREDICTION_S, requested_s)


def correct(predicted_s: float, elapsed_s: float, requested_s: float) -> float:
    """``predicted_s`` raised past ``elapsed_s`` when the job has outlived it; <= requested."""
    if elapsed_s < predicted_s:
        return predicted_s
    for step in CORRECTION_STEPS_S:
        if step > elapsed_s:
            return min(step, requested_s)
    return requested_s


class RuntimeHistory:
    """The caller's side: the last ``keep`` ended jobs of every owner, saved as JSON.

    Mutable and owned by one caller (the Scheduler service, the benchmark's
    replay); :meth:`view` is what goes into a :class:`Snapshot`.
    """

    def __init__(self, keep: int = 8) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}; keep at least 1 ended job per owner")
        self.keep = keep
        self._jobs: dict[str, deque[Ended]] = {}
        self._view: dict[str, tuple[Ended, ...]] = {}

    def record(self, owner: str, runtime_s: float, requested_s: float) -> None:
        """Remember that a job of ``owner`` ran ``runtime_s``; it had asked for ``requested_s``."""
        jobs = self._jobs.get(owner)
        if jobs is None:
            jobs = self._jobs[owner] = deque(maxlen=self.keep)
        jobs.append(Ended(max(0.0, runtime_s), max(0.0, requested_s)))
        self._view[owner] = tuple(jobs)

    def view(self) -> Mapping[str, tuple[Ended, ...]]:
        """A copy for a snapshot (later records do not change it)."""
        return dict(self._view)

    def __len__(self) -> int:
        return len(self._jobs)

    # -- persistence -----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "owners": {
                owner: [[e.runtime_s, e.requested_s] for e in jobs]
                for owner, jobs in sorted(self._jobs.items())
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], keep: int | None = None) -> RuntimeHistory:
        history = cls(keep if keep is not None else int(data.get("keep", 4)))
        owners = data.get("owners", {})
        if not isinstance(owners, Mapping):
            raise ValueError(f"owners={type(owners).__name__}; expected a mapping owner -> jobs")
        for owner, jobs in owners.items():
            for runtime_s, requested_s in jobs:
                history.record(str(owner), float(runtime_s), float(requested_s))
        return history

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half of one."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, keep: int = 4) -> RuntimeHistory:
        """The history saved at ``path``, or an empty one if there is none."""
        if not path.exists():
            return cls(keep)
        return cls.from_json(json.loads(path.read_text()), keep)
