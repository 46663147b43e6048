"""Another job's result as an argument: the stand-in the decorator sends, the value the node gets.

``solve.submit(a)`` with ``a`` a ``JobHandle`` sends ``UpstreamResult(a.id)``
in ``a``'s place (top-level positional and keyword arguments), makes the job
depend on ``a`` (afterok) and lists ``job://<a.id>/result`` as an input.
The Core stages ``a``'s stored outcome into this job's own inputs
(``skyport-upstream.<id>.pkl``, ``skyport.core.dependencies``), and the
runner (``skyport.runtime.function``) puts the value in place before the
call.  The node reads only its own job's files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from skyport.runtime.contract import upstream_input_name

__all__ = ["UpstreamError", "UpstreamResult", "read_upstream", "resolve"]


@dataclass(frozen=True)
class UpstreamResult:
    """Stands for the value job ``job_id`` returned (rank 0's, for a multi-rank job)."""

    job_id: str


class UpstreamError(RuntimeError):
    """An upstream job's value could not be had: it failed, or its result is missing."""


def read_upstream(directory: Path) -> dict[str, bytes]:
    """Every staged upstream outcome in ``directory``, by file name."""
    return {p.name: p.read_bytes() for p in sorted(directory.glob("skyport-upstream.*.pkl"))}


def resolve(args: tuple[Any, ...], kwargs: dict[str, Any],
            staged: Mapping[str, bytes]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` with each ``UpstreamResult`` replaced by its job's value."""
    def value(arg: Any) -> Any:
        if not isinstance(arg, UpstreamResult):
            return arg
        data = staged.get(upstream_input_name(arg.job_id))
        if data is None:
            raise UpstreamError(f"upstream job {arg.job_id}: its result was not staged "
                                "into this job")
        outcome = cloudpickle.loads(data)
        if outcome[0] != "ok":
            raise UpstreamError(f"upstream job {arg.job_id} failed: {outcome[1]}: {outcome[2]}")
        return outcome[1]

    return tuple(value(a) for a in args), {k: value(v) for k, v in kwargs.items()}
