"""Jobs that wait for other jobs: whether a ``--dependency`` holds, can still hold, or never will.

The verdicts are pure (``waiting_for``, ``never_met``): the facts about the
upstream jobs come in as ``Upstream`` records, and the job machine
(``skyport.core.machine``, event ``UpstreamChanged``) turns "never" into a
cancellation.  ``DependencyDesk`` is the service's side: it reads those facts
from the store, and stages an upstream function job's result into a dependent
job's own prefix (``job://ID/result`` inputs), so the dependent job's node never
reads another job's files.

A dependant waits in QUEUED, out of planning, with the wait reason
``Dependency``.  It is cancelled ("dependency ID ended FAILED") as soon as a
condition can no longer hold: when an upstream job ends (the service feeds
the machine the dependants of every job that ended, again and again, so
chains propagate), when it is submitted (its upstream may already be over),
and when the control plane starts (a cascade cut short by a stop is finished).

An id may name a job ARRAY (Slurm's semantics): ``afterok:A`` holds when every
task of A ended SUCCEEDED and can never hold once one has not; ``afterany:A``
when all ended; ``afternotok:A`` when all ended and one did not succeed;
``after:A`` once one task started.  A task ``A_3`` is a job like any other.
An array submitted with a dependency waits as a whole: each task has the
array's spec, and the store keeps one ``dependencies`` row for the array.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skyport.arrays import split_task_id
from skyport.core.messages import UpstreamChanged
from skyport.dependencies import Condition, parse_dependency, upstream_ids
from skyport.errors import NotFoundError, StorageError, ValidationError
from skyport.models import Job, JobSpec, JobState
from skyport.runtime.contract import (
    RESULT_STORED_AS,
    parse_upstream_url,
    rank_result_path,
    upstream_input_name,
)

if TYPE_CHECKING:  # the verdicts, which the machine imports, need neither
    from skyport.storage import JobStorage
    from skyport.store import JobStore

__all__ = ["DEPENDENCY", "DependencyDesk", "Upstream", "array_upstream", "never_met",
           "waiting_for"]

DEPENDENCY = "Dependency"  # the wait reason's code (squeue's)
S = JobState
_NOT_OK = frozenset({S.FAILED, S.CANCELLED, S.TIMEOUT})
# a job in one of these holds (or is getting) a cluster: a singleton's namesake "runs"
_ACTIVE = frozenset({S.SCHEDULED, *(s for s in S if s.has_cluster())})


@dataclass(frozen=True)
class Upstream:
    """What a dependency needs to know of a job it names."""

    id: str
    state: JobState
    started: bool  # reached RUNNING at least once (a requeued job stays started)
    # an array: its first task that ended FAILED, CANCELLED or TIMEOUT (id, state), and
    # how far it is, for the wait reason; ``state`` is then the array's as a whole
    failed_task: tuple[str, JobState] | None = None
    progress: str | None = None

    @classmethod
    def of(cls, job: Job) -> Upstream:
        return cls(job.id, job.state, job.started_at is not None)


def array_upstream(array_id: str, counts: Mapping[str, int], started: bool,
                   failed_task: tuple[str, str] | None) -> Upstream:
    """An array as one upstream job: ended when every task has; SUCCEEDED when every
    task did, else the state its first unsuccessful task ended in.  Pure."""
    total = sum(counts.values())
    ended = sum(n for state, n in counts.items() if S(state).is_terminal())
    failed = None if failed_task is None else (failed_task[0], S(failed_task[1]))
    if total and ended == total:
        state = S.SUCCEEDED if failed is None else failed[1]
    else:  # not over: the state shown is only a label, the verdicts read the rest
        state = S.RUNNING if counts.get(S.RUNNING.value) else S.QUEUED
    return Upstream(array_id, state, started, failed,
                    f"array: {ended} of {total} tasks ended"
                    + (f", {failed[0]} {failed[1].value}" if failed else ""))


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> tuple[Condition, ...]:
    return parse_dependency(text)  # every task of an array has the same text


def conditions(job: Job) -> tuple[Condition, ...]:
    return _parsed(job.spec.dependency) if job.spec.dependency else ()


def _holds(kind: str, up: Upstream) -> bool:
    if kind == "afterok":
        return up.state == S.SUCCEEDED
    if kind == "afternotok":
        return up.state in _NOT_OK
    if kind == "afterany":
        return up.state.is_terminal()
    return up.started or up.state.is_terminal()  # after: started, or over without starting


def never_met(job: Job, upstream: Mapping[str, Upstream]) -> str | None:
    """Why ``job``'s dependency can never hold (``"dependency ID ended STATE"``), or None.

    A job id missing from ``upstream`` no longer exists: that can never hold either.
    """
    for cond in conditions(job):
        for job_id in cond.job_ids:
            up = upstream.get(job_id)
            if up is None:
                return f"dependency {job_id} no longer exists"
            if up.state.is_terminal() and not _holds(cond.kind, up):
                return f"dependency {job_id} ended {up.state.value}" + _which(up)
            if cond.kind == "afterok" and up.failed_task is not None:  # not all over yet
                return f"dependency {job_id} ended {up.failed_task[1].value}" + _which(up)
    return None


def _which(up: Upstream) -> str:
    return f" (task {up.failed_task[0]})" if up.failed_task is not None else ""


def waiting_for(job: Job, upstream: Mapping[str, Upstream],
                namesakes: Sequence[Job] = ()) -> str | None:
    """What ``job`` still waits for (a sentence naming the jobs), or None when it may run.

    ``namesakes``: the owner's other jobs of the same name that are queued or
    hold a cluster, in submission order; a ``singleton`` waits while one of
    them holds a cluster, or while one submitted before it is itself a
    queued singleton (they start one at a time, in submission order).
    """
    waits: list[str] = []
    for cond in conditions(job):
        if cond.kind == "singleton":
            other = _singleton_blocker(job, namesakes)
            if other is not None:
                waits.append(f"singleton: job {other.id} of the same name is "
                             f"{other.state.value}")
            continue
        pending = [up for up in (upstream.get(i) for i in cond.job_ids)
                   if up is None or not _holds(cond.kind, up)]
        if pending:
            waits.append(f"{cond.kind}: " + ", ".join(
                f"{up.id} ({up.progress or up.state.value})" for up in pending
                if up is not None))
    return "waits for " + "; ".join(waits) if waits else None


def _singleton_blocker(job: Job, namesakes: Sequence[Job]) -> Job | None:
    before = True  # namesakes come in submission order: who was submitted first
    for other in namesakes:
        if other.id == job.id:
            before = False
            continue
        if other.owner != job.owner or other.spec.name != job.spec.name:
            continue
        if other.state in _ACTIVE:
            return other
        if before and other.state == S.QUEUED and \
                any(c.kind == "singleton" for c in conditions(other)):
            return other
    return None


class DependencyDesk:
    """The service's side of dependencies: facts from the store, results staged in."""

    def __init__(self, store: JobStore, storage: JobStorage) -> None:
        self.store = store
        self.storage = storage

    def upstream(self, jobs: Iterable[Job]) -> dict[str, Upstream]:
        """Every job the ``jobs``' dependencies name, as it is now (absent: gone)."""
        out: dict[str, Upstream] = {}
        for text in {j.spec.dependency for j in jobs if j.spec.dependency}:
            for job_id in upstream_ids(_parsed(text)):
                if job_id not in out:
                    up = self._one(job_id)
                    if up is not None:
                        out[job_id] = up
        return out

    def _one(self, job_id: str) -> Upstream | None:
        try:
            return Upstream.of(self.store.get(job_id, events=False))
        except NotFoundError:
            pass
        try:
            self.store.array(job_id)
        except NotFoundError:
            return None
        return array_upstream(job_id, *self.store.array_facts(job_id))

    def namesakes(self, jobs: Iterable[Job]) -> list[Job]:
        """The queued or active jobs of every owner that has a singleton among ``jobs``."""
        owners = {j.owner for j in jobs if any(c.kind == "singleton" for c in conditions(j))}
        return [other for owner in sorted(owners)
                for other in self.store.list(owner=owner, states=[S.QUEUED, *_ACTIVE])]

    def blocked(self, queued: Sequence[Job]) -> dict[str, str]:
        """``{job id: what it waits for}`` for each of ``queued`` whose dependency does not hold."""
        waiting = [j for j in queued if j.spec.dependency]
        if not waiting:
            return {}
        upstream, namesakes = self.upstream(waiting), self.namesakes(waiting)
        out = {}
        same: dict[str, str | None] = {}  # an array's tasks: one verdict (no singleton)
        for job in waiting:
            text = job.spec.dependency or ""
            if "singleton" in text:
                why = waiting_for(job, upstream, namesakes)
            elif text in same:
                why = same[text]
            else:
                why = same[text] = waiting_for(job, upstream, namesakes)
            if why is not None:
                out[job.id] = why
        return out

    def changed(self, ended: Iterable[str] | None) -> UpstreamChanged | None:
        """The event for the queued dependants of ``ended`` (None: of every job), or None."""
        if ended is None:
            return self.event([j for j in self.store.list(states=[S.QUEUED])
                               if j.spec.dependency])
        ended = list(ended)
        return self.event(self.store.dependants([*ended, *self._settled_arrays(ended)]))

    def _settled_arrays(self, ended: Sequence[str]) -> list[str]:
        """The arrays of the ``ended`` tasks whose dependants' verdict may now be final:
        one task did not succeed, or every task is over.  Not the others: a
        dependent array's 10,000 tasks are not read again as each upstream task ends."""
        out = []
        named = self.store.depended_on(s[0] for s in map(split_task_id, ended) if s)
        for array_id in sorted(named):  # an array no one waits on costs one indexed lookup
            counts, _, failed = self.store.array_facts(array_id)
            if failed is not None or all(S(state).is_terminal() for state in counts):
                out.append(array_id)
        return out

    def event(self, jobs: Sequence[Job]) -> UpstreamChanged | None:
        """``UpstreamChanged`` for ``jobs``, with their upstream jobs as they are now."""
        return UpstreamChanged(tuple(jobs), self.upstream(jobs)) if jobs else None

    def array_event(self, array_id: str) -> UpstreamChanged | None:
        """``UpstreamChanged`` for a just-submitted dependent array, only if its dependency
        can already never hold: its tasks are read only then."""
        first = self.store.list(array_id=array_id, limit=1)
        if not first or never_met(first[0], self.upstream(first)) is None:
            return None
        return self.event(self.store.list(array_id=array_id, states=[S.QUEUED]))

    def check_submitted(self, spec: JobSpec, owner: str) -> None:
        """Every job id ``spec``'s dependency names is one of ``owner``'s; ``job://`` inputs
        name an ``afterok`` one.  The same refusal for another user's job as for none, so
        ids cannot be probed."""
        conds = parse_dependency(spec.dependency) if spec.dependency else ()
        arrays = set()
        for job_id in upstream_ids(conds):
            try:
                mine = self.store.get(job_id, events=False).owner == owner
            except NotFoundError:
                try:  # an array's id: every task of it
                    mine = self.store.array(job_id).owner == owner
                    arrays.add(job_id)
                except NotFoundError:
                    mine = False
            if not mine:
                raise ValidationError("dependency", job_id, "the id of one of your own jobs")
        after_ok = {i for c in conds if c.kind == "afterok" for i in c.job_ids}
        for url in spec.inputs:
            named = parse_upstream_url(url)
            if named is not None and named in arrays:
                raise ValidationError("input", url, "a job:// input of one job (an array "
                                      f"has no one result: job://{named}_INDEX/result)")
            if named is not None and named not in after_ok:
                raise ValidationError("input", url, f"a job:// input of a job this one depends "
                                      f"on with afterok (--dependency=afterok:{named})")

    def stage_results(self, job: Job) -> None:
        """Copy each ``job://ID/result`` input's result into ``job``'s own inputs.

        Checked again here, not only at submit: the upstream job must be the
        same owner's, have SUCCEEDED, and the bytes must be the ones its live
        attempt stored (their digest recorded then): they are unpickled on the node.
        """
        for url in job.spec.inputs:
            job_id = parse_upstream_url(url)
            if job_id is None:
                continue
            refused = ValidationError("input", url, "the result of one of your own jobs "
                                      "that SUCCEEDED")
            try:
                up = self.store.get(job_id, events=False)
            except NotFoundError:
                raise refused from None
            if up.owner != job.owner or up.state != S.SUCCEEDED:
                raise refused
            ranks = up.spec.resources.nodes * up.spec.layout.ranks_per_node
            path = rank_result_path(0) if ranks > 1 else RESULT_STORED_AS
            try:
                data = self.storage.get(job_id, path)
            except NotFoundError:
                raise ValidationError("input", url, "the result of a function job of yours "
                                      f"(job {job_id} stored none)") from None
            expected = up.result_digests.get(path)
            if expected is None or hashlib.sha256(data).hexdigest() != expected:
                raise StorageError(f"the result of job {job_id} is not the one its run stored")
            self.storage.put(job.id, f"inputs/{upstream_input_name(job_id)}", data)
