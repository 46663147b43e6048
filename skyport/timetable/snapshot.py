"""The engine's input: what is queued, what is running, and where jobs can run.

A :class:`Snapshot` is a frozen picture taken by the caller (the Scheduler
actor or the benchmark's replay driver) at ``now_s``. The engine reads no
clock: ``now_s`` is the only notion of time it has.

Units: times are seconds on the caller's clock (any epoch), sizes are
processors (cores). ``procs`` of a job is ``nodes x cpus per node``.

Pools are the gates' capacity. ``price_per_hour`` is per processor-hour and
``boot_s`` is how long a pool needs to bring capacity up for a job; a job on a
pool holds its processors for ``boot_s + est_runtime_s`` from its planned
start (its planned start is when provisioning begins).

A queued job may also say where and how it wants to run (all optional; a job
that sets none of them is placed exactly as before, see
:mod:`skyport.timetable.engine`): a price cap per node-hour, a preference for
the cheapest pool over the earliest one, and a deadline for its *end*
(planned start + boot + estimate, as Slurm's ``--deadline`` is about ending).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["COST", "TIME", "Ended", "JobId", "Pool", "QueuedJob", "RunningJob", "Snapshot"]

JobId = int | str

TIME = "time"
"""``QueuedJob.prefer``: the earliest start among the pools it may use (the default)."""
COST = "cost"
"""``QueuedJob.prefer``: the cheapest pool whose planned end meets the deadline."""

_EMPTY_USAGE: Mapping[str, float] = MappingProxyType({})
_EMPTY_HISTORY: Mapping[str, tuple[Ended, ...]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Ended:
    """What the Scheduler saw of one ended job: how long it ran and what it had asked for."""

    runtime_s: float
    requested_s: float


@dataclass(frozen=True, slots=True)
class Pool:
    """A place jobs run: one gate's capacity, in processors."""

    name: str
    capacity: int
    price_per_hour: float | None = None
    """Price of one processor-hour on this pool, if known."""
    boot_s: float = 0.0
    """Seconds from a job's planned start until its processors are usable."""


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A job waiting for a start. ``est_runtime_s`` is its time limit (``--time``)."""

    id: JobId
    owner: str
    submit_s: float
    procs: int
    est_runtime_s: float
    nodes: int = 1
    priority: int = 0
    allowed_pools: tuple[str, ...] = ()
    """Names of the pools this job may use; empty means any."""
    max_price_per_hour: float | None = None
    """Highest price per node-hour this job may run at (see :meth:`node_price`); None: any."""
    prefer: str = TIME
    """``TIME`` or ``COST``: how the engine chooses among the pools the job may use."""
    deadline_s: float | None = None
    """When the job must have ended (planned start + boot + estimate); None: no deadline."""
    node_prices: tuple[tuple[str, float], ...] = ()
    """``(pool, price per node-hour)`` where the caller knows this job's own price (the
    flavor a gate would give it); elsewhere it is ``procs / nodes`` processors at the
    pool's ``price_per_hour`` (unknown counts as 0)."""

    constrained: bool = field(init=False, repr=False, compare=False)
    """Whether the job sets a price cap, a preference or a deadline (kept, not computed on
    each read: the engine asks it of every queued job at every pass of a replay)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "constrained", self.max_price_per_hour is not None
                           or self.prefer != TIME or self.deadline_s is not None)

    def node_price(self, pool: Pool) -> float:
        """This job's price per node-hour on ``pool``."""
        for name, price in self.node_prices:
            if name == pool.name:
                return price
        return (pool.price_per_hour or 0.0) * self.procs / max(self.nodes, 1)


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job holding ``procs`` processors on ``pool`` since ``start_s``."""

    id: JobId
    owner: str
    pool: str
    procs: int
    start_s: float
    est_runtime_s: float

    @property
    def est_end_s(self) -> float:
        """When the job is expected to end; may lie in the past for a job running over."""
        return self.start_s + self.est_runtime_s


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a planning pass may look at.

    ``usage`` maps an owner to its decayed past usage in processor-seconds
    (for fair-share policies); the caller keeps the ledger, see
    :mod:`skyport.timetable.usage`.

    ``history`` maps an owner to their most recently ended jobs, oldest
    first (for policies that predict runtimes, see
    :mod:`skyport.timetable.predict`); the caller keeps it from the jobs it
    has seen end, see :class:`skyport.timetable.predict.RuntimeHistory`.
    """

    now_s: float
    queued: tuple[QueuedJob, ...]
    running: tuple[RunningJob, ...]
    pools: tuple[Pool, ...]
    usage: Mapping[str, float] = field(default_factory=lambda: _EMPTY_USAGE)
    history: Mapping[str, tuple[Ended, ...]] = field(default_factory=lambda: _EMPTY_HISTORY)
