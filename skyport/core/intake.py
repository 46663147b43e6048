"""Taking a job in: the spec checked against every gate and input, its files, its row.

Nothing is queued unless the whole request can ever run; a job that is in the
store always has its script (and a function job its payload) in storage.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from skyport.config import InputPolicy, SubmitLimits
from skyport.core.arrays import submit_array
from skyport.core.dependencies import DependencyDesk
from skyport.core.inputs import InputSource, check_input_url
from skyport.core.placement import checked_for_placement
from skyport.errors import ConflictError, NotFoundError, SkyportError, ValidationError
from skyport.gate import Flavor
from skyport.models import Job, JobSpec, JobState
from skyport.pki import Identity
from skyport.runtime.contract import PAYLOAD_FILE as PAYLOAD_INPUT
from skyport.runtime.contract import parse_upstream_url
from skyport.storage import JobStorage
from skyport.store import ArrayRecord, JobStore

FIT_MEMORY_S = 60.0  # a gate's "this shape can run here" is asked again after this long
FIT_MEMORY_MAX = 4096  # shapes remembered at most (forgotten all at once past that)


class CommitGroup:
    """Group commit: the submissions that are ready together share one transaction.

    ``synchronous=FULL`` makes each commit a sync of the store's file, which is
    most of what accepting a job costs; the first submission schedules the
    commit for the event loop's next round, so every other submission that is
    already on the loop (concurrent clients) joins it.  A lone submission waits
    for nothing but that one round.  Each is acknowledged only once the
    transaction that holds it has committed.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._pending: list[tuple[str, str, JobSpec, asyncio.Future[Job]]] = []
        self.commits = 0  # transactions, for tests and the benchmark's report

    async def add(self, job_id: str, owner: str, spec: JobSpec) -> Job:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Job] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._commit)
        self._pending.append((job_id, owner, spec, future))
        # shielded: a caller that goes away does not take the job out of the transaction
        return await asyncio.shield(future)

    def _commit(self) -> None:
        batch, self._pending = self._pending, []
        self.commits += 1
        try:
            jobs = self.store.add_many([(j, o, s) for j, o, s, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to each waiting submission
            if len(batch) == 1:
                _settle(batch[0][3], exc)
                return
            # one bad row must not refuse the others: each in a transaction of its own
            for job_id, owner, spec, future in batch:
                try:
                    _settle(future, self.store.add_many([(job_id, owner, spec)])[0])
                except Exception as one:  # noqa: BLE001
                    _settle(future, one)
            return
        for (*_, future), job in zip(batch, jobs, strict=True):
            _settle(future, job)


def _settle(future: asyncio.Future[Job], outcome: Job | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class JobIntake:
    def __init__(self, store: JobStore, storage: JobStorage, gates: Mapping[str, Any],
                 inputs: InputPolicy | None = None, state_dir: Path | None = None,
                 limits: SubmitLimits | None = None) -> None:
        self.store = store
        self.limits = limits or SubmitLimits()
        self.storage = storage
        self.gates = gates
        self.inputs = inputs or InputPolicy()
        # the state directory is never an input: by default the store's own directory
        self.state_dir = state_dir or store.path.parent
        protocols = storage.fs.protocol
        self._storage_protocols = tuple(protocols) if isinstance(protocols, tuple) \
            else (protocols,)
        # a gate's "yes, this shape fits" (a Ray round trip per submission otherwise);
        # refusals are never remembered
        self._fits_at: dict[tuple[Any, ...], float] = {}
        self.commits = CommitGroup(store)

    def sources(self, spec: JobSpec, owner: str) -> list[InputSource]:
        """The job's inputs as ``owner`` may read them; ValidationError names the first refused."""
        out: list[InputSource] = []
        for url in spec.inputs:
            if parse_upstream_url(url) is not None:
                continue  # another job's result: staged by skyport.core.dependencies
            source = check_input_url(url, owner, self.inputs, state_dir=self.state_dir,
                                     storage_protocols=self._storage_protocols,
                                     storage_root=self.storage.root)
            if not source.name or source.name == PAYLOAD_INPUT:
                raise ValidationError("input", url, "a URL that names a file")
            if source.name in {s.name for s in out}:
                raise ValidationError("input", url, "inputs with distinct file names")
            out.append(source)
        return out

    async def submit(self, who: Identity, spec: JobSpec, payload_b64: str | None = None) -> Job:
        self._check_room(who, 1)
        spec, payload = await self._prepare(who, spec, payload_b64)
        job_id = self._new_job_id()
        # files first: a job that is in the store always has its script; a failed add
        # takes them away again, so a refused submission leaves nothing in storage
        try:
            self._put_files(job_id, spec, payload)
            return await self.commits.add(job_id, who.username, spec)
        except asyncio.CancelledError:
            raise  # the group's transaction may still store the job: its files stay
        except BaseException:
            self.storage.remove_job(job_id)
            raise

    async def submit_many(self, who: Identity,
                          requests: Sequence[tuple[JobSpec, str | None]]) -> list[Job]:
        """Several jobs in one call, each checked as ``submit`` checks one: all refused
        (the error names the first refused job's index) or all stored in ONE transaction."""
        self._check_room(who, len(requests))
        prepared: list[tuple[JobSpec, bytes | None]] = []
        for i, (spec, payload_b64) in enumerate(requests):
            try:
                prepared.append(await self._prepare(who, spec, payload_b64))
            except ValidationError as exc:
                raise ValidationError(f"jobs[{i}].{exc.field}", exc.value, exc.allowed) \
                    from exc
            except SkyportError as exc:
                exc.message = f"jobs[{i}]: {exc.message}"
                exc.args = (exc.message,)
                raise
        ids: list[str] = []
        try:
            for spec, payload in prepared:
                job_id = self._new_job_id(taken=ids)
                ids.append(job_id)
                self._put_files(job_id, spec, payload)
            return self.store.add_many([(job_id, who.username, spec)
                                        for job_id, (spec, _) in zip(ids, prepared, strict=True)])
        except BaseException:
            for job_id in ids:
                self.storage.remove_job(job_id)
            raise

    def _check_room(self, who: Identity, adding: int) -> None:
        queued = self.store.count(owner=who.username, states=[JobState.QUEUED])
        if queued + adding > self.limits.max_queued_per_user:
            # one user's flood must not slow every listing and plan for everyone
            raise ConflictError(
                f"user {who.username} already has {queued} queued jobs: at most "
                f"{self.limits.max_queued_per_user} (limits.max_queued_per_user in config.json)")

    async def _prepare(self, who: Identity, spec: JobSpec,
                       payload_b64: str | None) -> tuple[JobSpec, bytes | None]:
        """The spec as it is queued and the function payload; ValidationError if refused."""
        if spec.array is not None:
            raise ValidationError("array", spec.array,
                                  "no array here: submit arrays with POST /v1/arrays "
                                  "(skyport submit and Client.submit_array do)")
        spec = await self._validate(spec, who.username)
        payload = None
        if spec.kind == "function":
            if not payload_b64:
                raise ValidationError("payload_b64", None, "a function job needs its payload")
            try:
                payload = base64.b64decode(payload_b64, validate=True)
            except ValueError as exc:
                raise ValidationError("payload_b64", "<not base64>", "base64 text") from exc
        elif payload_b64:
            raise ValidationError("payload_b64", "<payload>", "only function jobs carry one")
        return spec, payload

    def _put_files(self, job_id: str, spec: JobSpec, payload: bytes | None) -> None:
        self.storage.put(job_id, "script.sh", spec.script.encode())
        if payload is not None:
            self.storage.put(job_id, f"inputs/{PAYLOAD_INPUT}", payload)

    async def submit_array(self, who: Identity, spec: JobSpec,
                           payloads_b64: Sequence[str] | None = None) -> ArrayRecord:
        """One job array (``spec.array``): checked as one job, stored as one record."""
        return await submit_array(self.store, self.storage, self.limits, self._validate,
                                  self._new_job_id, who, spec, payloads_b64)

    def _new_job_id(self, taken: Sequence[str] = ()) -> str:
        # short enough to type; drawn again on a clash, before any file is written
        while True:
            job_id = secrets.token_hex(4)
            if job_id in taken:  # drawn already for another job of the same call
                continue
            try:
                self.store.get(job_id, events=False)
            except NotFoundError:
                try:  # nor an array's: "skyport cancel ID" must name one thing
                    self.store.array(job_id)
                except NotFoundError:
                    return job_id

    async def _can_ever_fit(self, gate: str, spec: JobSpec) -> str | None:
        r = spec.resources
        key = (gate, r.nodes, r.cpus_per_node, r.gpus_per_node, r.mem_mb, spec.flavor)
        now = time.monotonic()
        if now - self._fits_at.get(key, -FIT_MEMORY_S) < FIT_MEMORY_S:
            return None
        why: str | None = await self.gates[gate].can_ever_fit(
            r.nodes, r.cpus_per_node, r.gpus_per_node, r.mem_mb, spec.flavor)
        if why is None:
            if len(self._fits_at) >= FIT_MEMORY_MAX:
                self._fits_at.clear()
            self._fits_at[key] = now
        return why

    async def _validate(self, spec: JobSpec, owner: str) -> JobSpec:
        """The spec as it is queued (its deadline made absolute); ValidationError if refused."""
        if spec.gate is not None and spec.gate not in self.gates:
            raise ValidationError("gate", spec.gate, "one of: " + ", ".join(sorted(self.gates)))
        candidates = [spec.gate] if spec.gate else sorted(self.gates)
        r = spec.resources
        reasons = []
        # a price cap or a deadline is checked against every gate that fits, else one will do
        placing = spec.max_price_per_hour is not None or spec.deadline is not None
        fitting: dict[str, list[Flavor]] = {}
        fits = False
        for name in candidates:
            why = await self._can_ever_fit(name, spec)
            if why is None:
                fits = True
                if not placing:
                    break
                fitting[name] = list(await self.gates[name].flavors())
                continue
            reasons.append(why)
        if not fits:
            raise ValidationError(
                "resources",
                f"{r.nodes} nodes x {r.cpus_per_node} cpus, {r.gpus_per_node} gpus"
                + (f", {r.mem_mb} MB" if r.mem_mb else "")
                + (f", flavor {spec.flavor}" if spec.flavor else ""),
                "no gate can ever run this: " + " | ".join(reasons),
            )
        DependencyDesk(self.store, self.storage).check_submitted(spec, owner)
        if fitting:
            spec = checked_for_placement(spec, time.time(), fitting)
        inputs = [u for u in spec.inputs if parse_upstream_url(u) is None]
        for url, source in zip(inputs, self.sources(spec, owner), strict=True):
            # only now, with the policy passed, may the answer say whether the file exists
            why = self.storage.check_input(source, owner)
            if why is not None:
                raise ValidationError("input", url, f"a URL that exists and can be read ({why})")
        # Whether the nodes have the job's MPI is theirs to say (their agents report it at
        # hello; ``core.machine.nodes_lack``): the control plane's host proves nothing.
        return spec
