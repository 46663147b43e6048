"""Job arrays: Slurm's ``--array`` syntax, task ids and the tasks' environment.

An array is one submission of many tasks that share a spec (and one copy of
its script): ``--array=0-9999``, ``1,3,5-7``, ``0-99:2``, and ``%N`` at the
end to run at most N tasks at once.  Task ``i`` of array ``A`` is the job
``A_i`` (as ``squeue`` shows it); ``skyport cancel A`` reaches every task.

Pure: no I/O.  The store keeps the array record (``JobStore.add_array``),
the Core stages each task's files when it starts (``skyport.core.arrays``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["ARRAY_ALLOWED", "MAX_ARRAY_SIZE", "ArraySpec", "array_env", "parse_array",
           "split_task_id", "task_id"]

MAX_ARRAY_SIZE = 100_000
"""Indices run from 0 to MAX_ARRAY_SIZE - 1, so an array has at most this many tasks
(Slurm's default ``MaxArraySize``): every task is a row the scheduler looks at."""

MAX_ARRAY_CHARS = 1024 * 1024  # every index listed one by one fits

ARRAY_ALLOWED = (
    "indices as N, N-M or N-M:STEP (M >= N, STEP >= 1), comma-separated, each index "
    f"0..{MAX_ARRAY_SIZE - 1} at most once, optionally ending in %LIMIT (LIMIT >= 1), "
    "e.g. 0-9999, 1,3,5-7, 0-99:2%10"
)

_PART = re.compile(r"(\d{1,7})(?:-(\d{1,7})(?::(\d{1,7}))?)?")
_TASK_ID = re.compile(r"([0-9a-f]{8})_(\d{1,7})")


class ArraySyntaxError(ValueError):
    """Why an ``--array`` value is refused (the message says what is allowed)."""


@dataclass(frozen=True)
class ArraySpec:
    """A parsed ``--array`` value: its indices in order and its throttle (None: none)."""

    indices: tuple[int, ...]
    throttle: int | None = None

    @property
    def count(self) -> int:
        return len(self.indices)

    @functools.cached_property
    def positions(self) -> dict[int, int]:
        """Where each index stands in ``indices`` (task i's payload is the i-th)."""
        return {index: n for n, index in enumerate(self.indices)}


@functools.lru_cache(maxsize=256)
def parse_array(text: str) -> ArraySpec:
    """``--array``'s value; ArraySyntaxError says what is wrong and what is allowed.

    Cached: every task's spec carries its array's text, and each is checked
    wherever a spec is read (a listing of 10,000 tasks parses it once).
    """
    if len(text) > MAX_ARRAY_CHARS:
        raise ArraySyntaxError(f"{len(text)} characters: at most {MAX_ARRAY_CHARS}")
    if not isinstance(text, str) or not text.strip():
        raise ArraySyntaxError(f"an empty value: {ARRAY_ALLOWED}")
    body, pct, limit = text.strip().partition("%")
    throttle = None
    if pct:
        if not limit.isdigit() or len(limit) > 7:
            raise ArraySyntaxError(f"limit {limit!r} after '%' is not a whole number: "
                                   f"{ARRAY_ALLOWED}")
        throttle = int(limit)
        if throttle < 1:
            raise ArraySyntaxError(f"limit %{limit}: at least 1 task must be allowed to run "
                                   "(%1 runs them one at a time)")
    seen: set[int] = set()
    indices: list[int] = []
    for part in body.split(","):
        m = _PART.fullmatch(part.strip())
        if m is None:
            raise ArraySyntaxError(f"{part!r} is not N, N-M or N-M:STEP: {ARRAY_ALLOWED}")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        step = int(m[3]) if m[3] is not None else 1
        if step < 1:
            raise ArraySyntaxError(f"step {step} in {part!r}: the step must be at least 1")
        if hi < lo:
            raise ArraySyntaxError(f"range {part!r} descends: write it as {hi}-{lo}")
        if hi >= MAX_ARRAY_SIZE:
            raise ArraySyntaxError(f"index {hi} in {part!r}: indices run from 0 to "
                                   f"{MAX_ARRAY_SIZE - 1}, so at most {MAX_ARRAY_SIZE} tasks "
                                   "in one array")
        # indices below MAX_ARRAY_SIZE, each once: no array can have more tasks
        for i in range(lo, hi + 1, step):
            if i in seen:
                raise ArraySyntaxError(f"index {i} appears twice: each index at most once")
            seen.add(i)
            indices.append(i)
    return ArraySpec(tuple(indices), throttle)


def task_id(array_id: str, index: int) -> str:
    """The job id of task ``index`` of ``array_id``: ``A_i``, as squeue writes it."""
    return f"{array_id}_{index}"


def split_task_id(job_id: str) -> tuple[str, int] | None:
    """``(array_id, index)`` of a task's job id, or None for any other id."""
    m = _TASK_ID.fullmatch(job_id)
    return (m[1], int(m[2])) if m else None


def array_env(job_id: str, array_text: str | None) -> dict[str, str]:
    """What a task's payload sees (Slurm's ``SLURM_ARRAY_*`` under Sky Port's names)."""
    split = split_task_id(job_id)
    if split is None or not array_text:
        return {}
    spec = parse_array(array_text)
    return {
        "SKYPORT_ARRAY_JOB_ID": split[0],
        "SKYPORT_ARRAY_TASK_ID": str(split[1]),
        "SKYPORT_ARRAY_TASK_COUNT": str(spec.count),
        "SKYPORT_ARRAY_TASK_MIN": str(min(spec.indices)),
        "SKYPORT_ARRAY_TASK_MAX": str(max(spec.indices)),
        "SKYPORT_ARRAY_TASK_STEP": _step(spec.indices),
    }


def _step(indices: tuple[int, ...]) -> str:
    steps = {b - a for a, b in zip(indices, indices[1:], strict=False)}
    return str(steps.pop()) if len(steps) == 1 else "1"
