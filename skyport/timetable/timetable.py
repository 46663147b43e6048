"""The engine's output: a planned start, a pool and a size for every queued job.

Entries come in three kinds:

* ``START``: the job starts now (its processors are free now);
* ``RESERVED``: a start the policy guarantees, given the estimates (EASY's head
  job, every job under conservative backfilling);
* ``PROJECTED``: a best estimate with no guarantee (the rest of an EASY or
  strict queue). Projected entries are computed on first use, so a pass whose
  caller only asks "what starts now" does not pay for them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from skyport.timetable.snapshot import JobId

__all__ = ["Placement", "PlacementKind", "Timetable", "Unplaceable"]


class PlacementKind(enum.Enum):
    """How firm a planned start is."""

    START = "start"
    RESERVED = "reserved"
    PROJECTED = "projected"


@dataclass(frozen=True, slots=True)
class Placement:
    """One queued job's planned start."""

    job_id: JobId
    start_s: float
    pool: str
    procs: int
    nodes: int
    kind: PlacementKind


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """A queued job that cannot fit any pool it may use, and why."""

    job_id: JobId
    reason: str


@dataclass(frozen=True, eq=False)
class Timetable:
    """The result of one planning pass.

    ``starts`` and ``reserved`` are decided during the pass; the projected rest
    is produced by ``_project`` the first time :attr:`entries` is read.
    """

    now_s: float
    policy: str
    starts: tuple[Placement, ...]
    reserved: tuple[Placement, ...]
    unplaceable: tuple[Unplaceable, ...]
    _project: Callable[[], tuple[Placement, ...]] = field(repr=False, default=lambda: ())

    @property
    def to_start_now(self) -> tuple[Placement, ...]:
        """Jobs whose planned start is now and whose processors are free now."""
        return self.starts

    @cached_property
    def projected(self) -> tuple[Placement, ...]:
        """Best-estimate starts of the jobs that neither start now nor hold a reservation."""
        return self._project()

    @cached_property
    def entries(self) -> tuple[Placement, ...]:
        """One placement per placeable queued job, in planned-start order."""
        every = self.starts + self.reserved + self.projected
        return tuple(sorted(every, key=lambda p: p.start_s))

    @cached_property
    def by_job(self) -> Mapping[JobId, Placement]:
        """Placements keyed by job id."""
        return {p.job_id: p for p in self.entries}

    def start_of(self, job_id: JobId) -> float:
        """Planned start of one job; ``KeyError`` if it is unplaceable or unknown."""
        return self.by_job[job_id].start_s
