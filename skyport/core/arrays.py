"""Job arrays in the Core: taking one in, staging a task's files, the ``%N`` throttle.

An array is ONE record in the store (its spec and script once) and one row
per task (``JobStore.add_array``, one transaction); its script (and a
function array's payloads, as one file) is written once under the array's
own prefix.  A task's node reads only its own prefix with its token, so when
a task starts the Core copies the script, and that task's payload alone, into
the task's prefix (``stage_task``).  ``throttle`` keeps all but the allowed
number of an array's queued tasks out of the planning snapshot.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable, Sequence

from skyport.arrays import parse_array, split_task_id
from skyport.config import SubmitLimits
from skyport.errors import ConflictError, NotFoundError, ValidationError
from skyport.models import Job, JobSpec, JobState
from skyport.pki import Identity
from skyport.protocol import ArrayView
from skyport.runtime.contract import PAYLOAD_STORED_AS
from skyport.storage import JobStorage
from skyport.store import ArrayRecord, JobStore, utcnow

__all__ = ["ARRAY_TASK_LIMIT", "PAYLOADS_FILE", "SCRIPT_FILE", "array_view", "stage_task",
           "array_tasks", "submit_array", "throttle", "visible_array"]

ARRAY_TASK_LIMIT = "ArrayTaskLimit"
"""The wait reason of a task held back by its array's ``%N`` (Slurm's word)."""

SCRIPT_FILE = "script.sh"
PAYLOADS_FILE = "payloads.bin"  # every task's cloudpickled call, end to end, in index order
MAX_PAYLOADS_BYTES = 64 * 1024 * 1024  # together, as for one function job's payload


async def submit_array(store: JobStore, storage: JobStorage, limits: SubmitLimits,
                       validate: Callable[[JobSpec, str], Awaitable[JobSpec]],
                       new_id: Callable[[], str], who: Identity, spec: JobSpec,
                       payloads_b64: Sequence[str] | None) -> ArrayRecord:
    """Check the array as ``JobIntake.submit`` checks a job, write its files once, store it.

    ``validate`` and ``new_id`` are the intake's (every gate and input checked,
    an id no job or array has).
    """
    if spec.array is None:
        raise ValidationError("array", None, "indices, e.g. 0-9999 (POST /v1/jobs takes one job)")
    indices = parse_array(spec.array)  # the spec's validator has passed: this parses
    queued = store.count(owner=who.username, states=[JobState.QUEUED])
    limit = limits.max_queued_per_user
    if queued + indices.count > limit:
        raise ConflictError(
            f"user {who.username} has {queued} queued jobs; {indices.count} more tasks would "
            f"pass {limit} (limits.max_queued_per_user in config.json)")
    spec = await validate(spec, who.username)  # as queued: a relative deadline made absolute
    blob, offsets = _payloads(spec, payloads_b64, indices.count)
    array_id = new_id()
    record = ArrayRecord(array_id, who.username, spec, indices.count, indices.throttle,
                         utcnow(), offsets)
    try:  # files first, as for a job: a stored array always has its script
        storage.put(array_id, SCRIPT_FILE, spec.script.encode())
        if blob is not None:
            storage.put(array_id, PAYLOADS_FILE, blob)
        store.add_array(record, indices.indices)
    except BaseException:
        storage.remove_job(array_id)
        raise
    return record


def _payloads(spec: JobSpec, payloads_b64: Sequence[str] | None,
              count: int) -> tuple[bytes | None, tuple[int, ...] | None]:
    if spec.kind != "function":
        if payloads_b64:
            raise ValidationError("payloads_b64", f"<{len(payloads_b64)} payloads>",
                                  "only a function array carries payloads")
        return None, None
    if not payloads_b64 or len(payloads_b64) != count:
        raise ValidationError("payloads_b64", f"<{len(payloads_b64 or ())} payloads>",
                              f"one payload per task: {count}")
    parts, offsets, at = [], [0], 0
    for n, text in enumerate(payloads_b64):
        try:
            part = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ValidationError(f"payloads_b64[{n}]", "<not base64>", "base64 text") from exc
        at += len(part)
        if at > MAX_PAYLOADS_BYTES:
            raise ValidationError("payloads_b64", f"more than {MAX_PAYLOADS_BYTES} bytes",
                                  f"at most {MAX_PAYLOADS_BYTES} bytes of payloads together")
        parts.append(part)
        offsets.append(at)
    return b"".join(parts), tuple(offsets)


def stage_task(store: JobStore, storage: JobStorage, job: Job) -> None:
    """Copy what task ``job`` needs from its array's prefix into its own (no-op for a job).

    Written again on every start: a requeued task finds the same files.
    """
    if job.array_id is None or job.array_index is None:
        return
    record = store.array(job.array_id)
    storage.put(job.id, SCRIPT_FILE, record.spec.script.encode())
    if record.payload_offsets is not None:
        n = parse_array(record.spec.array or "").positions[job.array_index]
        start, end = record.payload_offsets[n], record.payload_offsets[n + 1]
        data = b"".join(storage.iter_range(job.array_id, PAYLOADS_FILE, start, end))
        storage.put(job.id, PAYLOAD_STORED_AS, data)


def throttle(queued: Iterable[Job], limits: dict[str, int],
             counts: dict[str, dict[str, int]]) -> tuple[list[Job], dict[str, str]]:
    """The queued jobs the scheduler may plan, and why each held-back task waits.

    ``limits``: each throttled array's ``%N``; ``counts``: its tasks per state.
    A task is active from SCHEDULED until it ends; an array may have at most N
    active, so only ``N - active`` of its queued tasks (lowest index first, in
    queue order) go to the planner this pass.  Pure.
    """
    room = {}
    for array_id, limit in limits.items():
        active = sum(n for state, n in counts.get(array_id, {}).items()
                     if state != JobState.QUEUED and not JobState(state).is_terminal())
        room[array_id] = limit - active
    keep: list[Job] = []
    held: dict[str, str] = {}
    for job in queued:
        left = room.get(job.array_id or "")
        if left is None:
            keep.append(job)
        elif left > 0:
            room[job.array_id or ""] = left - 1
            keep.append(job)
        else:
            limit = limits[job.array_id or ""]
            held[job.id] = (f"array {job.array_id} runs at most {limit} task(s) at once "
                            f"(%{limit}); it starts when one ends")
    return keep, held


def visible_array(store: JobStore, who: Identity, array_id: str) -> ArrayRecord:
    """The array, if ``who`` may see it; otherwise the answer for an unknown id."""
    record = store.array(array_id)
    if record.owner != who.username and not who.is_admin:
        raise NotFoundError(f"no job {array_id}")
    return record


def array_view(store: JobStore, record: ArrayRecord, *, indices: bool = True) -> ArrayView:
    counts = store.array_counts([record.id])[record.id]
    return ArrayView(
        id=record.id, owner=record.owner, name=record.spec.name, array=record.spec.array or "",
        task_count=record.task_count, throttle=record.throttle,
        submitted_at=record.submitted_at.isoformat(),
        counts={JobState(k): v for k, v in counts.items()},
        indices=list(parse_array(record.spec.array or "").indices) if indices else [])


def array_tasks(store: JobStore, who: Identity, job_id: str) -> list[Job] | None:
    """The tasks not yet over of array ``job_id`` (``who``'s), or None if it names no array."""
    if split_task_id(job_id) is not None:
        return None
    try:
        visible_array(store, who, job_id)
    except NotFoundError:
        return None
    return store.list(array_id=job_id, states=[s for s in JobState if not s.is_terminal()])
