"""The job store: SQLite in WAL mode, the one durable copy of every job.

Every state change is written together with its event (time and reason) in
one transaction before anything acts on it, so a control plane killed at any
moment restarts from exactly what it had promised.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from skyport.errors import ConflictError, NotFoundError
from skyport.lifecycle import check_transition
from skyport.models import Event, Job, JobSpec, JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    owner TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    submitted_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    gate TEXT,
    flavor TEXT,
    price_per_hour REAL,
    cluster_id TEXT,
    node_names TEXT NOT NULL DEFAULT '[]',
    planned_start_at TEXT,
    restarts INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT,
    lost_attempts TEXT NOT NULL DEFAULT '[]',
    checkpoint_version INTEGER NOT NULL DEFAULT 0,
    result_digests TEXT NOT NULL DEFAULT '{}',
    held INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    n INTEGER NOT NULL,
    time TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS warm_clusters (
    cluster_id TEXT PRIMARY KEY,
    gate TEXT NOT NULL,
    owner TEXT NOT NULL,
    from_job TEXT NOT NULL,
    flavor TEXT,
    price_per_hour REAL,
    nodes INTEGER NOT NULL,
    cpus_per_node INTEGER NOT NULL,
    gpus_per_node INTEGER NOT NULL,
    mem_mb INTEGER,
    since REAL NOT NULL,
    idle_hashes TEXT NOT NULL DEFAULT '[]',
    assigned_job TEXT
);
CREATE TABLE IF NOT EXISTS open_checkpoints (
    job_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
"""

_UPDATABLE = {
    "reason",
    "exit_code",
    "started_at",
    "ended_at",
    "gate",
    "flavor",
    "price_per_hour",
    "cluster_id",
    "node_names",
    "planned_start_at",
    "restarts",
    "token_hash",
    "lost_attempts",
    "checkpoint_version",
    "result_digests",
    "held",
}
_ADDED_COLUMNS = {  # columns a store written by an earlier version lacks
    "price_per_hour": "REAL",
    "lost_attempts": "TEXT NOT NULL DEFAULT '[]'",
    "checkpoint_version": "INTEGER NOT NULL DEFAULT 0",
    "result_digests": "TEXT NOT NULL DEFAULT '{}'",
    "held": "INTEGER NOT NULL DEFAULT 0",
}


@dataclass(frozen=True)
class WarmCluster:
    """A finished job's cluster kept for the next job of its owner and shape.

    ``idle_hashes[rank]`` is the hash of the idle credential handed to that
    node's agent (None until handed out); ``assigned_job`` is the job the
    cluster was handed to, until every node has picked that job up.
    """

    cluster_id: str
    gate: str
    owner: str
    from_job: str
    flavor: str | None
    price_per_hour: float | None
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    mem_mb: int | None
    since: float
    idle_hashes: tuple[str | None, ...] = ()
    assigned_job: str | None = None


StoreChange = tuple[Any, ...]  # see JobStore.apply


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


SPEC_MEMORY_ENTRIES = 1024  # distinct spec texts kept parsed (then forgotten all at once)
SPEC_MEMORY_MAX_CHARS = 16 * 1024  # a longer spec (a big script) is parsed every time


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for name, decl in _ADDED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        self._lock = threading.RLock()
        self._specs: dict[str, JobSpec] = {}  # spec text -> parsed (``_spec``)
        # called after every committed state change, e.g. so the Core re-plans:
        # whoever changed a job need not remember to say so
        self.on_change: list[Callable[[str, JobState], None]] = []

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writes -------------------------------------------------------------

    def add(self, job_id: str, owner: str, spec: JobSpec, reason: str = "submitted") -> Job:
        now = utcnow()
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            try:
                db.execute(
                    "INSERT INTO jobs (id, seq, owner, spec, state, reason, submitted_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        seq,
                        owner,
                        spec.model_dump_json(),
                        JobState.QUEUED.value,
                        reason,
                        _ts(now),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"job {job_id} already exists") from exc
            self._event(db, job_id, now, JobState.QUEUED, reason)
        self._changed(job_id, JobState.QUEUED)
        return self.get(job_id)

    def transition(self, job_id: str, new: JobState, reason: str, **fields: Any) -> Job:
        """Move a job to ``new``, with its event, atomically; ConflictError if not allowed."""
        now = utcnow()
        with self._tx() as db:
            self._transition(db, now, job_id, new, reason, fields)
        self._changed(job_id, new)
        return self.get(job_id)

    def _transition(self, db: sqlite3.Connection, now: datetime, job_id: str, new: JobState,
                    reason: str, fields: dict[str, Any]) -> None:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        check_transition(job_id, JobState(row["state"]), new)
        if new == JobState.RUNNING and "started_at" not in fields:
            fields["started_at"] = now
        if new.is_terminal() and "ended_at" not in fields:
            fields["ended_at"] = now
        fields["reason"] = reason
        self._update(db, job_id, {"state": new.value, **fields})
        self._event(db, job_id, now, new, reason)

    def apply(self, changes: Iterable[StoreChange]) -> list[str]:
        """Several changes in ONE transaction: all of them or none.

        ``("transition", job_id, state, reason, fields)``, ``("update", job_id,
        fields)``, ``("put_warm", WarmCluster)``, ``("drop_warm", cluster_id)``,
        ``("open_checkpoint", job_id, data or None)``, ``("note", job_id, reason)`` (an
        event in the job's current state).  A transition that the
        lifecycle does not allow raises ConflictError and nothing is written.
        Returns the ids of the jobs whose state changed.
        """
        now = utcnow()
        changed: list[tuple[str, JobState]] = []
        with self._tx() as db:
            for change in changes:
                kind = change[0]
                if kind == "transition":
                    _, job_id, new, reason, fields = change
                    self._transition(db, now, job_id, new, reason, dict(fields))
                    changed.append((job_id, new))
                elif kind == "update":
                    self._update(db, change[1], dict(change[2]))
                elif kind == "note":
                    row = db.execute("SELECT state FROM jobs WHERE id = ?",
                                     (change[1],)).fetchone()
                    if row is not None:
                        self._event(db, change[1], now, JobState(row["state"]), change[2])
                elif kind == "put_warm":
                    self._put_warm(db, change[1])
                elif kind == "drop_warm":
                    db.execute("DELETE FROM warm_clusters WHERE cluster_id = ?", (change[1],))
                elif kind == "open_checkpoint":
                    if change[2] is None:
                        db.execute("DELETE FROM open_checkpoints WHERE job_id = ?", (change[1],))
                    else:
                        db.execute("INSERT OR REPLACE INTO open_checkpoints (job_id, data)"
                                   " VALUES (?, ?)", (change[1], json.dumps(change[2])))
                else:
                    raise ValueError(f"unknown store change {kind!r}")
        for job_id, state in changed:
            self._changed(job_id, state)
        return [job_id for job_id, _ in changed]

    def open_checkpoints(self) -> dict[str, dict[str, Any]]:
        """Checkpoints being uploaded when the last control plane stopped, by job."""
        with self._lock:
            rows = self._db.execute("SELECT job_id, data FROM open_checkpoints").fetchall()
        return {r["job_id"]: json.loads(r["data"]) for r in rows}

    def _changed(self, job_id: str, state: JobState) -> None:
        for listener in self.on_change:
            listener(job_id, state)

    def update(self, job_id: str, **fields: Any) -> None:
        """Change bookkeeping fields without a state change (no event)."""
        with self._tx() as db:
            self._update(db, job_id, fields)

    def _update(self, db: sqlite3.Connection, job_id: str, fields: dict[str, Any]) -> None:
        cols, values = [], []
        for key, value in fields.items():
            if key != "state" and key not in _UPDATABLE:
                raise KeyError(key)
            if isinstance(value, datetime):
                value = _ts(value)
            elif key in ("node_names", "lost_attempts"):
                value = json.dumps(list(value))
            elif key == "result_digests":
                value = json.dumps(dict(value), sort_keys=True)
            cols.append(f"{key} = ?")
            values.append(value)
        if cols:
            db.execute(f"UPDATE jobs SET {', '.join(cols)} WHERE id = ?", (*values, job_id))

    @staticmethod
    def _event(
        db: sqlite3.Connection, job_id: str, now: datetime, state: JobState, reason: str
    ) -> None:
        n = db.execute("SELECT COUNT(*) FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        db.execute(
            "INSERT INTO events (job_id, n, time, state, reason) VALUES (?, ?, ?, ?, ?)",
            (job_id, n, _ts(now), state.value, reason),
        )

    # -- warm clusters (skyport.core.warm) ------------------------------------

    def put_warm(self, warm: WarmCluster) -> None:
        with self._tx() as db:
            self._put_warm(db, warm)

    @staticmethod
    def _put_warm(db: sqlite3.Connection, warm: WarmCluster) -> None:
        row = list(astuple(warm))
        names = [f.name for f in fields(WarmCluster)]
        row[names.index("idle_hashes")] = json.dumps(list(warm.idle_hashes))
        db.execute(f"INSERT OR REPLACE INTO warm_clusters ({', '.join(names)})"
                   f" VALUES ({', '.join('?' * len(names))})", row)

    def drop_warm(self, cluster_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM warm_clusters WHERE cluster_id = ?", (cluster_id,))

    def warm_clusters(self) -> list[WarmCluster]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM warm_clusters ORDER BY since").fetchall()
        return [WarmCluster(**{**dict(r), "idle_hashes": tuple(json.loads(r["idle_hashes"]))})
                for r in rows]

    # -- reads --------------------------------------------------------------

    def get(self, job_id: str, *, events: bool = True) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            evs = self._events(job_id) if events else []
        return self._job(row, evs)

    def token_hash(self, job_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT token_hash FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["token_hash"] if row else None

    def list(
        self,
        *,
        owner: str | None = None,
        states: Iterable[JobState] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Job]:
        """Jobs in submission order; ``after``: only those submitted after that job."""
        sql = "SELECT * FROM jobs"
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if after is not None:
            where.append("seq > COALESCE((SELECT seq FROM jobs WHERE id = ?), -1)")
            args.append(after)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if states is not None:
            st = [s.value for s in states]
            where.append(f"state IN ({', '.join('?' * len(st))})")
            args.extend(st)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [self._job(r, []) for r in rows]

    def counts_by_state(self, owner: str | None = None) -> dict[JobState, int]:
        """How many jobs (``owner``'s, or anyone's) are in each state, in one query."""
        sql = "SELECT state, COUNT(*) FROM jobs"
        args: builtins.list[Any] = []
        if owner is not None:
            sql += " WHERE owner = ?"
            args.append(owner)
        with self._lock:
            rows = self._db.execute(sql + " GROUP BY state", args).fetchall()
        return {JobState(r[0]): int(r[1]) for r in rows}

    def count(self, *, owner: str | None = None,
              states: Iterable[JobState] | None = None) -> int:
        """How many jobs ``owner`` has in ``states`` (None: anyone's, any state)."""
        sql, where, args = "SELECT COUNT(*) FROM jobs", [], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if states is not None:
            st = [s.value for s in states]
            where.append(f"state IN ({', '.join('?' * len(st))})")
            args.extend(st)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    # builtins.list: inside this class ``list`` names the method JobStore.list
    def _events(self, job_id: str) -> builtins.list[Event]:
        rows = self._db.execute(
            "SELECT time, state, reason FROM events WHERE job_id = ? ORDER BY n", (job_id,)
        ).fetchall()
        return [
            Event(time=_dt(r["time"]), state=JobState(r["state"]), reason=r["reason"]) for r in rows
        ]

    def _spec(self, text: str) -> JobSpec:
        """The parsed spec; identical texts share one (frozen) ``JobSpec``.

        Parsing every queued job's spec was most of a planning pass, a listing
        and a bulk cancel; jobs submitted from one script have the same spec.
        """
        spec = self._specs.get(text)
        if spec is None:
            spec = JobSpec.model_validate_json(text)
            if len(text) <= SPEC_MEMORY_MAX_CHARS:
                if len(self._specs) >= SPEC_MEMORY_ENTRIES:
                    self._specs.clear()
                self._specs[text] = spec
        return spec

    def _job(self, row: sqlite3.Row, events: builtins.list[Event]) -> Job:
        return Job(
            id=row["id"],
            owner=row["owner"],
            spec=self._spec(row["spec"]),
            state=JobState(row["state"]),
            reason=row["reason"],
            exit_code=row["exit_code"],
            submitted_at=_dt(row["submitted_at"]),
            started_at=_dt(row["started_at"]),
            ended_at=_dt(row["ended_at"]),
            gate=row["gate"],
            flavor=row["flavor"],
            price_per_hour=row["price_per_hour"],
            cluster_id=row["cluster_id"],
            node_names=json.loads(row["node_names"]),
            planned_start_at=_dt(row["planned_start_at"]),
            restarts=row["restarts"],
            lost_attempts=json.loads(row["lost_attempts"]),
            checkpoint_version=row["checkpoint_version"],
            result_digests=json.loads(row["result_digests"]),
            held=bool(row["held"]),
            events=events,
        )
