"""The timetable engine: ``plan(snapshot, policy) -> Timetable``.

Pure and synchronous: no I/O, no clock, no randomness. The policy orders the
queue; this module places jobs on pools under the policy's discipline (see
:mod:`skyport.timetable.policy`) and is the only place that does capacity
bookkeeping.

Conventions:

* a job's estimate is its time limit (``est_runtime_s``), planned as at least
  ``MIN_HOLD_S`` (1 s) so that a zero limit still holds its processors; a running job past
  its estimate is treated as ending now when planning, but its processors are
  not free *now*, so nothing is started on them in this pass;
* on a pool with ``boot_s``, a job holds its processors for
  ``boot_s + est_runtime_s`` from its planned start;
* among pools, a job takes the one with the earliest start, ties going to the
  lowest ``price_per_hour`` (unknown counts as 0), then the shortest
  ``boot_s``, then the order of ``Snapshot.pools``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skyport.timetable.errors import InvalidSnapshotError
from skyport.timetable.policy import Discipline, Policy
from skyport.timetable.profile import MIN_HOLD_S, AvailabilityProfile
from skyport.timetable.snapshot import JobId, Pool, QueuedJob, Snapshot
from skyport.timetable.timetable import Placement, PlacementKind, Timetable, Unplaceable

__all__ = ["plan"]

_START = PlacementKind.START
_RESERVED = PlacementKind.RESERVED
_PROJECTED = PlacementKind.PROJECTED


@dataclass(slots=True)
class _Board:
    """Per-pass state of the pools: free processors now and future releases."""

    now_s: float
    pools: tuple[Pool, ...]
    free: list[int]
    releases: list[list[tuple[float, int]]]
    boot: list[float]
    every_pool: tuple[int, ...]
    special: dict[JobId, tuple[int, ...]]

    def choices(self, job: QueuedJob) -> tuple[int, ...]:
        return self.special.get(job.id, self.every_pool) if self.special else self.every_pool

    def profiles(self) -> list[AvailabilityProfile]:
        return [
            AvailabilityProfile(self.now_s, pool.capacity, self.free[k], self.releases[k])
            for k, pool in enumerate(self.pools)
        ]

    def placement(self, job: QueuedJob, k: int, start_s: float, kind: PlacementKind) -> Placement:
        return Placement(job.id, start_s, self.pools[k].name, job.procs, job.nodes, kind)


def plan(snapshot: Snapshot, policy: Policy) -> Timetable:
    """Plan every queued job of ``snapshot`` under ``policy``."""
    board, placeable, unplaceable = _board(snapshot)
    ordered = policy.order(snapshot, placeable)
    discipline = policy.discipline
    if discipline is Discipline.CONSERVATIVE:
        starts, reserved = _conservative(board, ordered)
        return Timetable(snapshot.now_s, policy.name, starts, reserved, unplaceable)
    starts, pos = _start_in_order(board, ordered)
    if pos == len(ordered):
        return Timetable(snapshot.now_s, policy.name, starts, (), unplaceable)
    if discipline is Discipline.STRICT:
        rest = ordered[pos:]
        project = _projector(board, (), rest, monotone=True)
        return Timetable(snapshot.now_s, policy.name, starts, (), unplaceable, project)
    head = ordered[pos]
    reservation = _shadow(board, head)
    backfilled = _backfill(board, policy.backfill_order(snapshot, ordered[pos + 1 :]), reservation)
    started = {p.job_id for p in backfilled}
    rest = [job for job in ordered[pos + 1 :] if job.id not in started]
    placement = board.placement(head, reservation[0], reservation[1], _RESERVED)
    project = _projector(board, (head,), rest, monotone=False)
    return Timetable(
        snapshot.now_s, policy.name, starts + backfilled, (placement,), unplaceable, project
    )


def _hold(job: QueuedJob) -> float:
    """How long a job is planned to hold its processors (boot time aside)."""
    return max(job.est_runtime_s, MIN_HOLD_S)


# -- the board ---------------------------------------------------------------


def _board(snapshot: Snapshot) -> tuple[_Board, list[QueuedJob], tuple[Unplaceable, ...]]:
    pools = snapshot.pools
    if not pools:
        raise InvalidSnapshotError("snapshot has no pools; at least one pool is needed")
    index = {pool.name: k for k, pool in enumerate(pools)}
    if len(index) != len(pools):
        raise InvalidSnapshotError(f"pool names must be unique, got {[p.name for p in pools]}")
    for pool in pools:
        if pool.capacity <= 0:
            raise InvalidSnapshotError(
                f"pool {pool.name!r} has capacity {pool.capacity}; capacity must be > 0"
            )
    now = snapshot.now_s
    free = [pool.capacity for pool in pools]
    releases: list[list[tuple[float, int]]] = [[] for _ in pools]
    for job in snapshot.running:
        k = index.get(job.pool)
        if k is None:
            raise InvalidSnapshotError(
                f"running job {job.id!r} is on pool {job.pool!r}; known pools: {sorted(index)}"
            )
        free[k] -= job.procs
        end = job.start_s + job.est_runtime_s
        releases[k].append((end if end > now else now, job.procs))
    order = sorted(
        range(len(pools)),
        key=lambda k: (pools[k].price_per_hour or 0.0, pools[k].boot_s, k),
    )
    every_pool = tuple(order)
    smallest = min(pool.capacity for pool in pools)
    special: dict[JobId, tuple[int, ...]] = {}
    placeable: list[QueuedJob] = []
    unplaceable: list[Unplaceable] = []
    for job in snapshot.queued:
        procs = job.procs
        if not job.allowed_pools and 0 < procs <= smallest and job.est_runtime_s >= 0:
            placeable.append(job)
            continue
        reason = _why_unplaceable(job, pools, index)
        if reason is not None:
            unplaceable.append(Unplaceable(job.id, reason))
            continue
        allowed = set(job.allowed_pools) if job.allowed_pools else set(index)
        special[job.id] = tuple(
            k for k in order if pools[k].name in allowed and pools[k].capacity >= procs
        )
        placeable.append(job)
    board = _Board(now, pools, free, releases, [pool.boot_s for pool in pools], every_pool, special)
    return board, placeable, tuple(unplaceable)


def _why_unplaceable(job: QueuedJob, pools: tuple[Pool, ...], index: dict[str, int]) -> str | None:
    if job.procs <= 0:
        return f"procs={job.procs}; a job needs at least 1 processor"
    if job.est_runtime_s < 0:
        return f"est_runtime_s={job.est_runtime_s}; a time limit must be >= 0"
    unknown = [name for name in job.allowed_pools if name not in index]
    allowed = [pools[index[name]] for name in job.allowed_pools if name in index]
    if job.allowed_pools and not allowed:
        return (
            f"allowed_pools={list(job.allowed_pools)} names no known pool; known: {sorted(index)}"
        )
    candidates = allowed or list(pools)
    if all(pool.capacity < job.procs for pool in candidates):
        biggest = max(pool.capacity for pool in candidates)
        where = f" (unknown pools ignored: {unknown})" if unknown else ""
        return f"procs={job.procs} exceeds the largest allowed pool's capacity {biggest}{where}"
    return None


# -- disciplines ---------------------------------------------------------------


def _start_in_order(
    board: _Board, ordered: Sequence[QueuedJob]
) -> tuple[tuple[Placement, ...], int]:
    """Start jobs in order while the next one fits now; return the starts and where it stopped."""
    free, now, boot = board.free, board.now_s, board.boot
    starts: list[Placement] = []
    pos = 0
    for job in ordered:
        procs = job.procs
        for k in board.choices(job):
            if procs <= free[k]:
                free[k] -= procs
                board.releases[k].append((now + boot[k] + _hold(job), procs))
                starts.append(board.placement(job, k, now, _START))
                break
        else:
            break
        pos += 1
    return tuple(starts), pos


def _shadow(board: _Board, head: QueuedJob) -> tuple[int, float, int]:
    """The head's reservation: ``(pool index, shadow time, processors spare at the shadow)``."""
    best: tuple[float, int, int] | None = None
    need = head.procs
    for k in board.choices(head):
        avail = board.free[k]
        shadow = board.now_s if avail >= need else None
        for end, procs in sorted(board.releases[k]):
            if shadow is not None and end > shadow:
                break
            avail += procs
            if shadow is None and avail >= need:
                shadow = end
        assert shadow is not None  # the pool's capacity is >= need by construction
        if best is None or shadow < best[0]:
            best = (shadow, k, avail - need)
    assert best is not None
    return best[1], best[0], best[2]


def _backfill(
    board: _Board, candidates: Sequence[QueuedJob], reservation: tuple[int, float, int]
) -> tuple[Placement, ...]:
    """Start candidates now where they fit and do not delay the head's reservation."""
    head_pool, shadow, extra = reservation
    free, now, boot = board.free, board.now_s, board.boot
    started: list[Placement] = []
    if len(free) == 1 and not board.special and boot[0] == 0.0:
        # One pool, every job allowed: the hot loop of trace replays.
        spare = free[0]
        rel = board.releases[0]
        for job in candidates:
            procs = job.procs
            if procs > spare:
                continue
            est = job.est_runtime_s
            end = now + (est if est >= MIN_HOLD_S else MIN_HOLD_S)
            if end > shadow:
                if procs > extra:
                    continue
                extra -= procs
            spare -= procs
            rel.append((end, procs))
            started.append(board.placement(job, 0, now, _START))
            if spare == 0:
                break
        free[0] = spare
        return tuple(started)
    for job in candidates:
        procs = job.procs
        for k in board.choices(job):
            if procs > free[k]:
                continue
            end = now + boot[k] + _hold(job)
            if k == head_pool and end > shadow:
                if procs > extra:
                    continue
                extra -= procs
            free[k] -= procs
            board.releases[k].append((end, procs))
            started.append(board.placement(job, k, now, _START))
            break
    return tuple(started)


def _conservative(
    board: _Board, ordered: Sequence[QueuedJob]
) -> tuple[tuple[Placement, ...], tuple[Placement, ...]]:
    """Give every job, in order, the earliest reservation that fits around earlier ones."""
    profiles = board.profiles()
    boot = board.boot
    starts: list[Placement] = []
    reserved: list[Placement] = []
    for job in ordered:
        best: tuple[float, int, int] | None = None
        for k in board.choices(job):
            slot = profiles[k].earliest(job.procs, boot[k] + job.est_runtime_s)
            start = profiles[k].start_of(slot)
            if best is None or start < best[0]:
                best = (start, k, slot)
        assert best is not None
        start, k, slot = best
        profiles[k].reserve(slot, boot[k] + job.est_runtime_s, job.procs)
        if AvailabilityProfile.is_now(slot):
            starts.append(board.placement(job, k, start, _START))
        else:
            reserved.append(board.placement(job, k, start, _RESERVED))
    return tuple(starts), tuple(reserved)


def _projector(
    board: _Board, heads: Sequence[QueuedJob], rest: Sequence[QueuedJob], *, monotone: bool
) -> Callable[[], tuple[Placement, ...]]:
    """A function that places ``heads`` (unreported) then ``rest`` as projections.

    The board is captured as it is now (after this pass's starts); ``monotone``
    keeps starts in order (no job projected before an earlier one).
    """
    free = list(board.free)
    releases = [list(r) for r in board.releases]
    heads = tuple(heads)
    rest = tuple(rest)

    def project() -> tuple[Placement, ...]:
        profiles = [
            AvailabilityProfile(board.now_s, pool.capacity, free[k], releases[k])
            for k, pool in enumerate(board.pools)
        ]
        boot = board.boot
        out: list[Placement] = []
        floor: float | None = None
        for n, job in enumerate(heads + rest):
            best: tuple[float, int, int] | None = None
            for k in board.choices(job):
                slot = profiles[k].earliest(job.procs, boot[k] + job.est_runtime_s, floor)
                start = profiles[k].start_of(slot)
                if best is None or start < best[0]:
                    best = (start, k, slot)
            assert best is not None
            start, k, slot = best
            profiles[k].reserve(slot, boot[k] + job.est_runtime_s, job.procs)
            if monotone:
                floor = start
            if n >= len(heads):
                out.append(board.placement(job, k, start, _PROJECTED))
        return tuple(out)

    return project
