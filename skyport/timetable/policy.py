"""The policy plugin seam.

A policy decides *order*, the engine decides *placement*. A policy names one
of three placement disciplines and sorts the queue (and, for backfilling
disciplines, the backfill candidates); the engine turns that into starts,
reservations and projections. This keeps every policy a few lines long and
puts the capacity bookkeeping, which the properties in the tests guard, in
one place.

Disciplines:

* ``STRICT``: start jobs in policy order while the next one fits; the first
  that does not fit blocks the rest (FCFS, SJF).
* ``EASY``: as strict, then the blocked head gets a reservation at its shadow
  time and later jobs may start now if they do not delay it. A policy may
  name more jobs to reserve after the head (:meth:`Policy.also_reserve`);
  backfilled jobs then delay none of those reservations either.
* ``CONSERVATIVE``: every job, in policy order, gets the earliest reservation
  that does not delay any earlier one.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from skyport.timetable.snapshot import QueuedJob, Snapshot

__all__ = ["Capability", "Discipline", "Policy", "PolicyConfig"]


class Discipline(enum.Enum):
    """How the engine places jobs once the policy has ordered them."""

    STRICT = "strict"
    EASY = "easy"
    CONSERVATIVE = "conservative"


class Capability(enum.Enum):
    """What a caller may need to know about a policy before using it."""

    BACKFILL = "backfill"
    """Later jobs may start before earlier ones."""
    RESERVES_ALL = "reserves-all"
    """Every queued job holds a reservation (no job is ever delayed by a later one)."""
    NEEDS_USAGE = "needs-usage"
    """Reads ``Snapshot.usage``: the caller must keep a usage ledger."""
    NEEDS_HISTORY = "needs-history"
    """Reads ``Snapshot.history``: the caller must keep the owners' ended jobs."""
    PREDICTS = "predicts"
    """Plans with predicted runtimes: planned starts are predictions, not promises."""


class PolicyConfig(BaseModel):
    """Configuration of a policy; policies with knobs subclass this."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Policy(ABC):
    """A scheduling policy: a name, a discipline and an order on the queue."""

    name: ClassVar[str]
    discipline: ClassVar[Discipline]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    config_model: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise TypeError("pass either a config object or keyword options, not both")
        self.config = config if config is not None else self.config_model(**options)

    def planning_view(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot the engine places jobs on; by default ``snapshot`` itself.

        A policy that plans with predicted runtimes returns a copy whose
        ``est_runtime_s`` are its predictions. Jobs keep their ids, so the
        timetable names the caller's jobs; only holds and ends change.
        """
        return snapshot

    @abstractmethod
    def order(self, snapshot: Snapshot, jobs: Sequence[QueuedJob]) -> Sequence[QueuedJob]:
        """The queue in the order jobs are considered (highest precedence first)."""

    def also_reserve(
        self, snapshot: Snapshot, waiting: Sequence[QueuedJob]
    ) -> Sequence[QueuedJob]:
        """Jobs besides the head that hold reservations under ``EASY`` (by default none).

        ``waiting`` is the ordered queue after the head. The engine reserves the
        head, then these jobs in the order given, and backfills only jobs that
        delay none of them. A slowdown-first order uses this to keep a
        reservation for the longest-waiting jobs.
        """
        return ()

    def backfill_order(
        self, snapshot: Snapshot, candidates: Sequence[QueuedJob]
    ) -> Sequence[QueuedJob]:
        """The order in which backfill candidates are tried; by default the queue order."""
        return candidates

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"
