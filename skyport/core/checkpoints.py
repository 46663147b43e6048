"""Checkpoint versions of running jobs: which is open, who still owes a part, what follows.

A plain component of the job machine (``skyport.core.machine``): no I/O, no
clock.  Whatever asks for a checkpoint (the ``--checkpoint-every`` timer, the
job through its agent, a user, the time limit drawing near, a ``cancel
--checkpoint``, a requeue, a preemption notice) opens version N; every node's
agent learns it from its heartbeat answer, uploads its part under
``checkpoints/v<N>/`` and reports the files; once every node has reported,
the machine tells the Core to write ``checkpoints/latest.json``.  A version
that is not complete within ``CHECKPOINT_TIMEOUT_S`` is dropped, never
pointed at.

Open versions and what follows them (``After``) are persisted by the Core
(the ``SaveCheckpoint`` instruction), so a control plane restarted while a
checkpoint is being uploaded still completes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from skyport.errors import ConflictError, ValidationError

__all__ = ["After", "CheckpointBook", "OpenCheckpoint"]

CHECKPOINT_TIMEOUT_S = 120.0
FINAL_MARGIN_S = 10.0  # the last checkpoint is taken this long before the time limit
KEEP_VERSIONS = 2


@dataclass(frozen=True)
class After:
    """What to do once the open checkpoint is complete (or its deadline passes)."""

    action: Literal["requeue", "cancel"]
    reason: str
    deadline: float  # wall time
    counted: bool = True  # counts against max_restarts
    notice: str = ""  # "preempt": told to the agents in their heartbeat answer


@dataclass(frozen=True)
class OpenCheckpoint:
    """A checkpoint version being uploaded, with what follows it; what the Core persists."""

    job_id: str
    version: int
    id: str
    reason: str
    opened: float  # wall time
    ranks_left: frozenset[int]
    files: tuple[tuple[str, int], ...] = ()
    after: After | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ranks_left"] = sorted(self.ranks_left)
        d["files"] = [list(f) for f in self.files]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OpenCheckpoint:
        after = d.get("after")
        return cls(
            job_id=str(d["job_id"]), version=int(d["version"]), id=str(d["id"]),
            reason=str(d["reason"]), opened=float(d["opened"]),
            ranks_left=frozenset(int(r) for r in d["ranks_left"]),
            files=tuple((str(p), int(s)) for p, s in d.get("files", [])),
            after=After(**after) if after else None,
        )


@dataclass
class _JobBook:
    version: int = 0  # highest version opened
    last_at: float | None = None  # wall time of the last checkpoint opened
    final: bool = False  # the before-the-limit checkpoint was opened
    signalled: set[int] = field(default_factory=set)  # ranks told to signal their payload


class CheckpointBook:
    def __init__(self) -> None:
        self.open_: dict[str, OpenCheckpoint] = {}
        self._jobs: dict[str, _JobBook] = {}

    def _book(self, job_id: str, committed: int) -> _JobBook:
        book = self._jobs.get(job_id)
        if book is None:
            book = self._jobs[job_id] = _JobBook(version=committed)
        return book

    def restore(self, ck: OpenCheckpoint) -> None:
        """An open checkpoint that a previous control plane persisted."""
        self.open_[ck.job_id] = ck
        book = self._book(ck.job_id, ck.version)
        book.version = max(book.version, ck.version)
        book.last_at = ck.opened

    def forget(self, job_id: str) -> bool:
        """The attempt is over; True when an open checkpoint was dropped with it."""
        self._jobs.pop(job_id, None)
        return self.open_.pop(job_id, None) is not None

    def get(self, job_id: str) -> OpenCheckpoint | None:
        return self.open_.get(job_id)

    def after(self, job_id: str) -> After | None:
        ck = self.open_.get(job_id)
        return ck.after if ck else None

    def last_at(self, job_id: str) -> float | None:
        book = self._jobs.get(job_id)
        return book.last_at if book else None

    def open(self, job_id: str, nodes: int, committed: int, reason: str, now: float,
             new_id: str) -> tuple[OpenCheckpoint, bool]:
        """The open checkpoint of ``job_id``, opened now if there is none; (it, opened now)."""
        current = self.open_.get(job_id)
        if current is not None:
            return current, False
        book = self._book(job_id, committed)
        book.version = max(book.version, committed) + 1
        book.last_at = now
        ck = OpenCheckpoint(job_id=job_id, version=book.version, id=new_id, reason=reason,
                            opened=now, ranks_left=frozenset(range(nodes)))
        self.open_[job_id] = ck
        return ck, True

    def then(self, job_id: str, nodes: int, committed: int, after: After, now: float,
             new_id: str) -> OpenCheckpoint:
        """Open a checkpoint (or join the open one) and do ``after`` once it is complete."""
        current = self.open_.get(job_id)
        if current is not None and current.after is not None:
            doing = "cancelled" if current.after.action == "cancel" else "requeued"
            raise ConflictError(f"job {job_id} is already being {doing}")
        ck, _ = self.open(job_id, nodes, committed, after.reason, now, new_id)
        ck = replace(ck, after=after)
        self.open_[job_id] = ck
        return ck

    def part(self, job_id: str, version: int, ck_id: str, rank: int,
             files: list[tuple[str, int]]) -> OpenCheckpoint:
        """Node ``rank`` reported its part; the updated checkpoint (complete: no ranks left)."""
        ck = self.open_.get(job_id)
        if ck is None or ck.version != version or ck.id != ck_id:
            raise ConflictError(f"job {job_id}: checkpoint v{version} is not open (it was "
                                "completed, dropped, or belongs to an earlier attempt)")
        own = f"v{version}/nodes/{rank}/"
        prefix = f"v{version}/shared/" if rank == 0 else own
        for path, _size in files:
            if not path.startswith((prefix, own)) or ".." in path.split("/"):
                raise ValidationError("files", path, f"paths under {prefix} or {own}")
        ck = replace(ck, files=ck.files + tuple(files), ranks_left=ck.ranks_left - {rank})
        if ck.ranks_left:
            self.open_[job_id] = ck
        else:
            del self.open_[job_id]
        return ck

    def expired(self, now: float) -> list[OpenCheckpoint]:
        """Open checkpoints past their After's deadline or ``CHECKPOINT_TIMEOUT_S``; removed."""
        out = []
        for job_id, ck in list(self.open_.items()):
            deadline = ck.after.deadline if ck.after else ck.opened + CHECKPOINT_TIMEOUT_S
            if now >= deadline:
                del self.open_[job_id]
                out.append(ck)
        return out

    def due(self, job_id: str, started: float, limit_s: int, every_s: int | None,
            now: float) -> str | None:
        """The reason a running job's checkpoint is due now, or None."""
        if job_id in self.open_:
            return None
        book = self._book(job_id, 0)
        margin = min(FINAL_MARGIN_S, limit_s / 4)
        if not book.final and now >= started + limit_s - margin:
            book.final = True
            return "time limit near"
        last = book.last_at if book.last_at is not None else started
        if every_s and now - last >= every_s:
            return f"every {every_s}s"
        return None

    def signal_due(self, job_id: str, rank: int) -> bool:
        """True once per rank: that node is to signal its payload now."""
        told = self._book(job_id, 0).signalled
        if rank in told:
            return False
        told.add(rank)
        return True


def latest_record(ck: OpenCheckpoint, attempt: int, time_iso: str, now: float) -> dict[str, Any]:
    """The ``checkpoints/latest.json`` of a complete checkpoint."""
    files = [{"path": p, "size": s} for p, s in sorted(ck.files)]
    return {
        "version": ck.version,
        "time": time_iso,
        "reason": ck.reason,
        "attempt": attempt,
        "files": files,
        "bytes": sum(s for _, s in ck.files),
        "took_s": round(max(0.0, now - ck.opened), 3),
    }
