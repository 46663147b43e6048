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
  ``boot_s``, then the order of ``Snapshot.pools``;
* a job with a price cap (``QueuedJob.max_price_per_hour``) may use only the
  pools where its price per node-hour is at or under the cap;
* a job that prefers ``COST`` takes, among those, the cheapest pool whose
  planned end (start + boot + estimate) meets its deadline (any pool when it
  has none), ties going to the earlier start; when no pool meets the deadline
  in this pass, the pool where it would end first. Its pool is chosen each
  time the job is considered, against what is planned so far, and the
  discipline (strict, EASY, conservative) is then applied on that pool alone;
* a job with a deadline that no pool it may use could meet even if it started
  now (now + boot + estimate is past it) is unplaceable, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from skyport.timetable.errors import InvalidSnapshotError
from skyport.timetable.policy import Discipline, Policy
from skyport.timetable.profile import MIN_HOLD_S, AvailabilityProfile, Slot
from skyport.timetable.snapshot import COST, TIME, JobId, Pool, QueuedJob, Snapshot
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
    snapshot = policy.planning_view(snapshot)
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
        project = _projector(board, ordered, pos, (), monotone=True)
        return Timetable(snapshot.now_s, policy.name, starts, (), unplaceable, project)
    head = ordered[pos]
    extra = policy.also_reserve(snapshot, ordered[pos + 1 :])
    if extra:
        return _easy_reserving(snapshot, policy, board, ordered, pos, extra, starts, unplaceable)
    reservation = _shadow(board, head)
    backfilled = _backfill(board, policy.backfill_order(snapshot, ordered[pos + 1 :]), reservation)
    placement = board.placement(head, reservation[0], reservation[1], _RESERVED)
    project = _projector(board, ordered, pos, backfilled, monotone=False)
    return Timetable(
        snapshot.now_s, policy.name, starts + backfilled, (placement,), unplaceable, project
    )


def _hold(job: QueuedJob) -> float:
    """How long a job is planned to hold its processors (boot time aside)."""
    return max(job.est_runtime_s, MIN_HOLD_S)


# -- the board ---------------------------------------------------------------


def _board(snapshot: Snapshot) -> tuple[_Board, list[QueuedJob], tuple[Unplaceable, ...]]:
    pools = snapshot.pools
    index, every_pool, smallest, boot = _pool_facts(pools)
    now = snapshot.now_s
    running = snapshot.running
    releases: list[list[tuple[float, int]]]
    if len(pools) == 1:
        # One pool: comprehensions instead of a loop (this runs at every event of a replay).
        name = pools[0].name
        releases = [
            [
                (end if (end := job.start_s + job.est_runtime_s) > now else now, job.procs)
                for job in running
                if job.pool == name
            ]
        ]
        free = [pools[0].capacity - sum([procs for _, procs in releases[0]])]
        # Left for the loop below: only jobs on unknown pools, which it refuses.
        if len(releases[0]) < len(running):
            running = tuple(job for job in running if job.pool != name)
        else:
            running = ()
    else:
        free = [pool.capacity for pool in pools]
        releases = [[] for _ in pools]
    for job in running:
        k = index.get(job.pool)
        if k is None:
            raise InvalidSnapshotError(
                f"running job {job.id!r} is on pool {job.pool!r}; known pools: {sorted(index)}"
            )
        free[k] -= job.procs
        end = job.start_s + job.est_runtime_s
        releases[k].append((end if end > now else now, job.procs))
    special: dict[JobId, tuple[int, ...]] = {}
    queued = snapshot.queued
    placeable = [
        job
        for job in queued
        if not job.allowed_pools and 0 < job.procs <= smallest and job.est_runtime_s >= 0
        and not job.constrained
    ]
    if len(placeable) == len(queued):
        # Every job may use every pool: the common case, one comprehension.
        board = _Board(now, pools, free, releases, list(boot), every_pool, special)
        return board, placeable, ()
    placeable = []
    unplaceable: list[Unplaceable] = []
    for waiting in queued:
        procs = waiting.procs
        if (not waiting.allowed_pools and 0 < procs <= smallest and waiting.est_runtime_s >= 0
                and not waiting.constrained):
            placeable.append(waiting)
            continue
        reason = _why_unplaceable(waiting, pools, index)
        if reason is not None:
            unplaceable.append(Unplaceable(waiting.id, reason))
            continue
        allowed = set(waiting.allowed_pools) if waiting.allowed_pools else set(index)
        choices = tuple(
            k for k in every_pool if pools[k].name in allowed and pools[k].capacity >= procs
        )
        if waiting.constrained:
            choices, reason = _constrain(waiting, choices, pools, now)
            if reason is not None:
                unplaceable.append(Unplaceable(waiting.id, reason))
                continue
        special[waiting.id] = choices
        placeable.append(waiting)
    board = _Board(now, pools, free, releases, list(boot), every_pool, special)
    return board, placeable, tuple(unplaceable)


@lru_cache(maxsize=64)
def _pool_facts(
    pools: tuple[Pool, ...],
) -> tuple[dict[str, int], tuple[int, ...], int, tuple[float, ...]]:
    """Checked once per distinct pool set (they rarely change between passes).

    Returns the index of each pool name, the pool indices in preference order
    (price, then boot time, then position), the smallest capacity and the
    boot times. The index dict is shared between calls: read it, never change it.
    """
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
    order = sorted(
        range(len(pools)),
        key=lambda k: (pools[k].price_per_hour or 0.0, pools[k].boot_s, k),
    )
    smallest = min(pool.capacity for pool in pools)
    return index, tuple(order), smallest, tuple(pool.boot_s for pool in pools)


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


def _constrain(
    job: QueuedJob, choices: tuple[int, ...], pools: tuple[Pool, ...], now: float
) -> tuple[tuple[int, ...], str | None]:
    """The pools left to a job by its price cap and deadline, or why none is."""
    if job.prefer not in (TIME, COST):
        return (), f"prefer={job.prefer!r}; allowed: {TIME!r} or {COST!r}"
    cap = job.max_price_per_hour
    if cap is not None:
        within = tuple(k for k in choices if job.node_price(pools[k]) <= cap)
        if not within:
            cheapest = min(choices, key=lambda k: job.node_price(pools[k]))
            return (), (
                f"max_price_per_hour={cap:g} is below every pool that fits: the cheapest, "
                f"{pools[cheapest].name}, costs {job.node_price(pools[cheapest]):g} per "
                "node-hour"
            )
        choices = within
    if job.deadline_s is not None:
        hold = _hold(job)
        fastest = min(choices, key=lambda k: pools[k].boot_s)
        need = pools[fastest].boot_s + hold
        if now + need > job.deadline_s:
            left = max(job.deadline_s - now, 0.0)
            return (), (
                f"deadline cannot be met: {left:.0f} s remain, and the fastest pool it may "
                f"use, {pools[fastest].name}, needs {need:.0f} s (boot "
                f"{pools[fastest].boot_s:.0f} s + time limit {hold:.0f} s)"
            )
    return choices, None


def _pick(board: _Board, job: QueuedJob, starts: Sequence[tuple[int, float]]) -> int:
    """Which of ``starts`` (``(pool index, planned start)``, in preference order) to take.

    ``TIME``: the earliest start (the first in preference order on ties).
    ``COST``: the cheapest whose planned end meets the deadline, else the earliest end.
    """
    if job.prefer != COST:
        return min(range(len(starts)), key=lambda i: starts[i][1])
    hold, boot, deadline = _hold(job), board.boot, job.deadline_s
    ends = [start + boot[k] + hold for k, start in starts]
    meets = [i for i in range(len(starts)) if deadline is None or ends[i] <= deadline]
    if not meets:
        return min(range(len(starts)), key=lambda i: ends[i])
    pools = board.pools
    return min(meets, key=lambda i: (job.node_price(pools[starts[i][0]]), starts[i][1]))


def _earliest_on(board: _Board, k: int, need: int) -> tuple[float, int]:
    """When ``need`` processors are first free on pool ``k`` (releases only), and the
    processors spare then."""
    avail = board.free[k]
    shadow = board.now_s if avail >= need else None
    for end, procs in sorted(board.releases[k]):
        if shadow is not None and end > shadow:
            break
        avail += procs
        if shadow is None and avail >= need:
            shadow = end
    assert shadow is not None  # the pool's capacity is >= need by construction
    return shadow, avail - need


def _cost_pool(board: _Board, job: QueuedJob) -> int:
    """The pool a ``COST`` job takes in this pass, against what is planned so far."""
    choices = board.choices(job)
    starts = [(k, _earliest_on(board, k, job.procs)[0]) for k in choices]
    return starts[_pick(board, job, starts)][0]


# -- disciplines ---------------------------------------------------------------


def _start_in_order(
    board: _Board, ordered: Sequence[QueuedJob]
) -> tuple[tuple[Placement, ...], int]:
    """Start jobs in order while the next one fits now; return the starts and where it stopped."""
    free, now, boot = board.free, board.now_s, board.boot
    starts: list[Placement] = []
    pos = 0
    if len(free) == 1 and not board.special:
        # One pool, every job allowed: the hot loop of trace replays.
        spare, rel, name, hold0 = free[0], board.releases[0], board.pools[0].name, now + boot[0]
        for job in ordered:
            procs = job.procs
            if procs > spare:
                break
            spare -= procs
            est = job.est_runtime_s
            rel.append((hold0 + (est if est >= MIN_HOLD_S else MIN_HOLD_S), procs))
            starts.append(Placement(job.id, now, name, procs, job.nodes, _START))
            pos += 1
        free[0] = spare
        return tuple(starts), pos
    for job in ordered:
        procs = job.procs
        choices = (_cost_pool(board, job),) if job.prefer == COST else board.choices(job)
        for k in choices:
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
    choices = board.choices(head)
    if head.prefer == COST:
        options = [(k, *_earliest_on(board, k, head.procs)) for k in choices]
        k, shadow, spare = options[_pick(board, head, [(k, start) for k, start, _ in options])]
        return k, shadow, spare
    # the earliest shadow, the first in preference order on ties (a plain loop: every EASY
    # pass of a replay comes here)
    best: tuple[float, int, int] | None = None
    for k in choices:
        at, spare = _earliest_on(board, k, head.procs)
        if best is None or at < best[0]:
            best = (at, k, spare)
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
        choices = (_cost_pool(board, job),) if job.prefer == COST else board.choices(job)
        for k in choices:
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


def _easy_reserving(
    snapshot: Snapshot,
    policy: Policy,
    board: _Board,
    ordered: Sequence[QueuedJob],
    pos: int,
    extra: Sequence[QueuedJob],
    starts: tuple[Placement, ...],
    unplaceable: tuple[Unplaceable, ...],
) -> Timetable:
    """EASY with reservations for the head and ``extra``; backfill delays none of them.

    Reservations are made in order on availability profiles; a backfill
    candidate starts only where its whole hold fits now around them.
    """
    head = ordered[pos]
    ids = {job.id for job in extra}
    ids.discard(head.id)
    protected = [head, *(job for job in extra if job.id in ids)]
    profiles = board.profiles()
    placed = _reserve_in_order(board, profiles, protected, (_START, _RESERVED))
    # A protected job whose processors are free now starts now (it delays nobody ahead of it).
    early = [p for p in placed if p.kind is _START]
    for p in early:
        k = board.pools.index(next(pool for pool in board.pools if pool.name == p.pool))
        job = next(j for j in protected if j.id == p.job_id)
        board.free[k] -= job.procs
        board.releases[k].append((board.now_s + board.boot[k] + _hold(job), job.procs))
    reserved = tuple(p for p in placed if p.kind is _RESERVED)
    rest = [job for job in ordered[pos + 1 :] if job.id not in ids]
    free, now, boot = board.free, board.now_s, board.boot
    backfilled: list[Placement] = []
    for job in policy.backfill_order(snapshot, rest):
        procs = job.procs
        choices = board.choices(job)
        if job.prefer == COST:
            starts_on = [(k, AvailabilityProfile.start_of(
                profiles[k].earliest(procs, boot[k] + _hold(job)))) for k in choices]
            choices = (starts_on[_pick(board, job, starts_on)][0],)
        for k in choices:
            if procs > free[k]:
                continue
            hold = boot[k] + _hold(job)
            slot = profiles[k].earliest(procs, hold)
            if not AvailabilityProfile.is_now(slot):
                continue
            profiles[k].reserve(slot, hold, procs)
            free[k] -= procs
            board.releases[k].append((now + hold, procs))
            backfilled.append(board.placement(job, k, now, _START))
            break
    started = {p.job_id for p in backfilled} | {p.job_id for p in early}
    first = [job for job in protected if job.id not in started]

    def project() -> tuple[Placement, ...]:
        jobs = first + [job for job in rest if job.id not in started]
        return tuple(
            _reserve_in_order(
                board, board.profiles(), jobs, (_PROJECTED, _PROJECTED), skip=len(first)
            )
        )

    return Timetable(
        snapshot.now_s,
        policy.name,
        starts + tuple(early) + tuple(backfilled),
        reserved,
        unplaceable,
        project,
    )


def _conservative(
    board: _Board, ordered: Sequence[QueuedJob]
) -> tuple[tuple[Placement, ...], tuple[Placement, ...]]:
    """Give every job, in order, the earliest reservation that fits around earlier ones."""
    placed = _reserve_in_order(board, board.profiles(), ordered, (_START, _RESERVED))
    starts = tuple(p for p in placed if p.kind is _START)
    if not starts:
        return (), tuple(placed)
    return starts, tuple(p for p in placed if p.kind is _RESERVED)


def _reserve_in_order(
    board: _Board,
    profiles: list[AvailabilityProfile],
    jobs: Sequence[QueuedJob],
    kinds: tuple[PlacementKind, PlacementKind],
    *,
    skip: int = 0,
    monotone: bool = False,
) -> list[Placement]:
    """Reserve each job, in order, at its earliest fit on the profiles.

    A placement's kind is ``kinds[0]`` where the job's processors are free now,
    else ``kinds[1]``. The first ``skip`` jobs are reserved but not reported;
    ``monotone`` starts no job before the one reserved just before it.
    """
    now_kind, later_kind = kinds
    out: list[Placement] = []
    floor: float | None = None
    if len(profiles) == 1 and not board.special and board.boot[0] == 0.0:
        # One pool, every job allowed: the hot loop of large queues.
        profile = profiles[0]
        earliest, reserve, pool = profile.earliest, profile.reserve, board.pools[0].name
        for n, job in enumerate(jobs):
            procs, est = job.procs, job.est_runtime_s
            slot = earliest(procs, est, floor)
            reserve(slot, est, procs)
            if monotone:
                floor = slot[0]
            if n >= skip:
                kind = now_kind if slot[1] else later_kind
                out.append(Placement(job.id, slot[0], pool, procs, job.nodes, kind))
        return out
    boot = board.boot
    for n, job in enumerate(jobs):
        options: list[tuple[int, float, Slot]] = []
        for k in board.choices(job):
            slot = profiles[k].earliest(job.procs, boot[k] + job.est_runtime_s, floor)
            options.append((k, AvailabilityProfile.start_of(slot), slot))
        k, start, slot = options[_pick(board, job, [(k, start) for k, start, _ in options])]
        profiles[k].reserve(slot, boot[k] + job.est_runtime_s, job.procs)
        if monotone:
            floor = start
        if n >= skip:
            kind = now_kind if AvailabilityProfile.is_now(slot) else later_kind
            out.append(board.placement(job, k, start, kind))
    return out


def _projector(
    board: _Board,
    ordered: Sequence[QueuedJob],
    pos: int,
    backfilled: Sequence[Placement],
    *,
    monotone: bool,
) -> Callable[[], tuple[Placement, ...]]:
    """A function that projects the jobs from ``ordered[pos]`` on that did not start.

    Under EASY (``backfilled`` given, ``monotone`` false) ``ordered[pos]`` is
    the head: it is placed first and not reported (it holds a reservation).
    Under a strict discipline ``monotone`` keeps starts in order (no job
    projected before an earlier one). The board is this pass's own and is not
    changed after this point, so it is captured without copies; the work is
    done only if somebody asks for the projection.
    """

    def project() -> tuple[Placement, ...]:
        if monotone:
            jobs: Sequence[QueuedJob] = ordered[pos:]
            skip = 0
        else:
            started = {p.job_id for p in backfilled}
            jobs = [job for job in ordered[pos:] if job.id not in started]
            skip = 1
        profiles = board.profiles()
        kinds = (_PROJECTED, _PROJECTED)
        return tuple(_reserve_in_order(board, profiles, jobs, kinds, skip=skip, monotone=monotone))

    return project
