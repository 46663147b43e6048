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

from skyport.dependencies import parse_dependency
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
CREATE TABLE IF NOT EXISTS arrays (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    spec TEXT NOT NULL,
    task_count INTEGER NOT NULL,
    throttle INTEGER,
    submitted_at TEXT NOT NULL,
    payload_offsets TEXT
);
CREATE TABLE IF NOT EXISTS open_checkpoints (
    job_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS budgets (
    owner TEXT PRIMARY KEY,
    amount REAL NOT NULL,
    period TEXT NOT NULL,
    set_by TEXT NOT NULL DEFAULT '',
    set_at REAL NOT NULL DEFAULT 0
);
-- one row per job id a job's --dependency names (skyport.dependencies), so the jobs that
-- wait on one that just ended are found by index; a store of an earlier version gets the
-- empty table when it is opened; job_id may be an array's id: one row stands for every
-- task of a dependent array (JobStore.dependants finds the tasks by array_id)
CREATE TABLE IF NOT EXISTS dependencies (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    upstream TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (job_id, upstream, kind)
);
CREATE INDEX IF NOT EXISTS dependencies_upstream ON dependencies(upstream);
-- multipart uploads the Core opened on object storage for an attempt (skyport.direct),
-- kept until completed or aborted: an attempt that ends leaves none open (they cost
-- storage), even across a restart; token_hash names the attempt that opened it
CREATE TABLE IF NOT EXISTS open_uploads (
    upload_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    token_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS open_uploads_job ON open_uploads(job_id);
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
    "array_id": "TEXT",  # a task of a job array: its spec is the array's (skyport.arrays)
    "array_index": "INTEGER",
}


_ARRAY_SPECS_KEPT = 256  # parsed array specs kept in memory (each may hold a 1 MiB script)


@dataclass(frozen=True)
class ArrayRecord:
    """One job array: its spec (and script) once, for all of its tasks."""

    id: str
    owner: str
    spec: JobSpec
    task_count: int
    throttle: int | None
    submitted_at: datetime
    # where each task's function payload starts in the array's payloads file, and its end
    payload_offsets: tuple[int, ...] | None = None


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
        # FULL: a transaction is on disk when commit returns, so a job is acknowledged
        # only once it would survive a power cut (WAL's NORMAL loses the last commits)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for name, decl in _ADDED_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_array ON jobs(array_id)")
        # MAX(seq) at every insert and ORDER BY seq of every page: by index, not by a scan
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq)")
        # a user's queued jobs counted at every submission (max_queued_per_user)
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_owner_state ON jobs(owner, state)")
        # an array's tasks counted per state from the index alone (array_facts: each time a
        # task of an array that others depend on ends)
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_array_state ON jobs(array_id, state)")
        self._array_specs: dict[str, JobSpec] = {}  # an array's spec never changes
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
        return self.add_many([(job_id, owner, spec)], reason)[0]

    def add_many(self, jobs: Iterable[tuple[str, str, JobSpec]],
                 reason: str = "submitted") -> builtins.list[Job]:
        """Jobs ``(id, owner, spec)``, QUEUED, in ONE transaction: one sync for all of them
        (group commit of concurrent submissions, ``skyport.core.intake.CommitGroup``).

        ConflictError, and nothing stored, if any id exists already.
        """
        now = utcnow()
        ts = _ts(now)
        rows = [(job_id, owner, spec, spec.model_dump_json()) for job_id, owner, spec in jobs]
        with self._tx() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            try:
                db.executemany(
                    "INSERT INTO jobs (id, seq, owner, spec, state, reason, submitted_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(job_id, seq + n, owner, text, JobState.QUEUED.value, reason, ts)
                     for n, (job_id, owner, _, text) in enumerate(rows)])
            except sqlite3.IntegrityError as exc:
                raise ConflictError(
                    f"job {' or '.join(r[0] for r in rows)} already exists") from exc
            # a new job has no events yet: its first is number 0
            db.executemany(
                "INSERT INTO events (job_id, n, time, state, reason) VALUES (?, 0, ?, ?, ?)",
                [(job_id, ts, JobState.QUEUED.value, reason) for job_id, *_ in rows])
            deps = [(job_id, up, c.kind) for job_id, _, spec, _ in rows if spec.dependency
                    for c in parse_dependency(spec.dependency) for up in c.job_ids]
            if deps:
                db.executemany(
                    "INSERT OR IGNORE INTO dependencies (job_id, upstream, kind) VALUES (?, ?, ?)",
                    deps)
        for job_id, *_ in rows:
            self._changed(job_id, JobState.QUEUED)
        # what was written, without reading it back
        event = Event(time=now, state=JobState.QUEUED, reason=reason)
        return [Job(id=job_id, owner=owner, spec=spec, state=JobState.QUEUED, reason=reason,
                    submitted_at=now, events=[event])
                for job_id, owner, spec, _ in rows]

    def add_array(self, record: ArrayRecord, indices: Iterable[int],
                  reason: str = "submitted") -> None:
        """An array and every one of its tasks (QUEUED), in ONE transaction.

        The spec is stored once, in the array's row; a task's row holds no spec
        of its own (``spec`` is empty) and reads its array's.
        """
        now = utcnow()
        ts = _ts(now)
        with self._tx() as db:
            try:
                db.execute(
                    "INSERT INTO arrays (id, owner, spec, task_count, throttle, submitted_at,"
                    " payload_offsets) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.owner, record.spec.model_dump_json(), record.task_count,
                     record.throttle, _ts(record.submitted_at),
                     None if record.payload_offsets is None
                     else json.dumps(list(record.payload_offsets))))
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"array {record.id} already exists") from exc
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            ids = [(f"{record.id}_{i}", i) for i in indices]
            try:
                db.executemany(
                    "INSERT INTO jobs (id, seq, owner, spec, state, reason, submitted_at,"
                    " array_id, array_index) VALUES (?, ?, ?, '', ?, ?, ?, ?, ?)",
                    [(job_id, seq + n, record.owner, JobState.QUEUED.value, reason, ts,
                      record.id, i) for n, (job_id, i) in enumerate(ids)])
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"a task of array {record.id} already exists") from exc
            db.executemany(
                "INSERT INTO events (job_id, n, time, state, reason) VALUES (?, 0, ?, ?, ?)",
                [(job_id, ts, JobState.QUEUED.value, reason) for job_id, _ in ids])
            if record.spec.dependency:  # one row for the array, not one per task
                db.executemany(
                    "INSERT OR IGNORE INTO dependencies (job_id, upstream, kind) VALUES (?, ?, ?)",
                    [(record.id, up, c.kind) for c in parse_dependency(record.spec.dependency)
                     for up in c.job_ids])
        for job_id, _ in ids:
            self._changed(job_id, JobState.QUEUED)

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

    # -- open multipart uploads (skyport.core.uploads) ----------------------------

    def add_upload(self, upload_id: str, job_id: str, path: str, token_hash: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO open_uploads (upload_id, job_id, path,"
                       " token_hash) VALUES (?, ?, ?, ?)", (upload_id, job_id, path, token_hash))

    def drop_upload(self, upload_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM open_uploads WHERE upload_id = ?", (upload_id,))

    def open_uploads(self, job_id: str | None = None) -> builtins.list[tuple[str, str, str, str]]:
        """``(upload_id, job_id, path, token_hash)`` of the recorded uploads (of one job)."""
        with self._lock:
            if job_id is None:
                rows = self._db.execute("SELECT * FROM open_uploads").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM open_uploads WHERE job_id = ?",
                                        (job_id,)).fetchall()
        return [(r["upload_id"], r["job_id"], r["path"], r["token_hash"]) for r in rows]

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

    # -- budgets (skyport.core.budgets) ----------------------------------------

    def set_budget(self, owner: str, amount: float, period: str, set_by: str,
                   set_at: float) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO budgets (owner, amount, period, set_by, set_at)"
                       " VALUES (?, ?, ?, ?, ?)", (owner, amount, period, set_by, set_at))

    def budgets(self) -> dict[str, dict[str, Any]]:
        """Every user's budget: owner -> {amount, period, set_by, set_at}."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM budgets").fetchall()
        return {r["owner"]: dict(r) for r in rows}

    def ran(self, *, owner: str | None = None,
            since: datetime | None = None) -> builtins.list[Job]:
        """Jobs that have run and had not ended before ``since``, with their events.

        What a cost is computed from (``skyport.core.budgets.running_spans``).
        """
        where = ["j.started_at IS NOT NULL"]
        args: builtins.list[Any] = []
        if owner is not None:
            where.append("j.owner = ?")
            args.append(owner)
        if since is not None:
            where.append("(j.ended_at IS NULL OR j.ended_at >= ?)")
            args.append(_ts(since))
        cond = " AND ".join(where)
        with self._lock:
            rows = self._db.execute(f"SELECT j.* FROM jobs j WHERE {cond} ORDER BY j.seq",
                                    args).fetchall()
            evs: dict[str, builtins.list[Event]] = {}
            for r in self._db.execute(
                    f"SELECT e.job_id, e.time, e.state, e.reason FROM events e JOIN jobs j"
                    f" ON e.job_id = j.id WHERE {cond} ORDER BY e.job_id, e.n", args):
                evs.setdefault(r["job_id"], []).append(Event(
                    time=_dt(r["time"]), state=JobState(r["state"]), reason=r["reason"]))
        return [self._job(r, evs.get(r["id"], [])) for r in rows]

    # -- reads --------------------------------------------------------------

    def get(self, job_id: str, *, events: bool = True) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            evs = self._events(job_id) if events else []
        return self._job(row, evs)

    def array(self, array_id: str) -> ArrayRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM arrays WHERE id = ?", (array_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no job {array_id}")
        offsets = row["payload_offsets"]
        return ArrayRecord(
            id=row["id"], owner=row["owner"], spec=self._array_spec(row["id"], row["spec"]),
            task_count=row["task_count"], throttle=row["throttle"],
            submitted_at=datetime.fromisoformat(row["submitted_at"]),
            payload_offsets=None if offsets is None else tuple(json.loads(offsets)))

    def array_counts(self, array_ids: Iterable[str]) -> dict[str, dict[str, int]]:
        """How many tasks of each array are in each state: ``{array_id: {state: n}}``."""
        ids = builtins.list(dict.fromkeys(array_ids))
        out: dict[str, dict[str, int]] = {a: {} for a in ids}
        with self._lock:
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                rows = self._db.execute(
                    "SELECT array_id, state, COUNT(*) AS n FROM jobs WHERE array_id IN"
                    f" ({', '.join('?' * len(part))}) GROUP BY array_id, state", part).fetchall()
                for r in rows:
                    out[r["array_id"]][r["state"]] = r["n"]
        return out

    def array_throttles(self) -> dict[str, int]:
        """``{array_id: limit}`` of every array with ``%N`` that still has queued tasks."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, throttle FROM arrays WHERE throttle IS NOT NULL AND EXISTS"
                " (SELECT 1 FROM jobs WHERE jobs.array_id = arrays.id AND jobs.state = ?)",
                (JobState.QUEUED.value,)).fetchall()
        return {r["id"]: r["throttle"] for r in rows}

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
        array_id: str | None = None,
        newest: bool = False,
    ) -> list[Job]:
        """Jobs in submission order; ``after``: only those submitted after that job;
        ``array_id``: only that array's tasks.  ``newest``: newest first, and ``after``
        the job after which the page goes on (those submitted before it)."""
        sql = "SELECT * FROM jobs"
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if array_id is not None:
            where.append("array_id = ?")
            args.append(array_id)
        if after is not None:
            where.append("seq < COALESCE((SELECT seq FROM jobs WHERE id = ?), -1)" if newest
                         else "seq > COALESCE((SELECT seq FROM jobs WHERE id = ?), -1)")
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
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
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

    def dependants(self, job_ids: Iterable[str],
                   states: Iterable[JobState] = (JobState.QUEUED,)) -> builtins.list[Job]:
        """The jobs in ``states`` whose ``--dependency`` names any of ``job_ids``.

        A dependent array's row stands for its tasks: each of them is one."""
        ids, st = builtins.list(dict.fromkeys(job_ids)), [s.value for s in states]
        if not ids or not st:
            return []
        marks = ", ".join("?" * len(st))
        found: dict[str, sqlite3.Row] = {}
        with self._lock:
            waiting: builtins.list[str] = []
            for at in range(0, len(ids), 500):  # under SQLite's limit on bound values
                part = ids[at:at + 500]
                waiting += [r[0] for r in self._db.execute(
                    "SELECT DISTINCT job_id FROM dependencies WHERE upstream IN"
                    f" ({', '.join('?' * len(part))})", part)]
            waiting = builtins.list(dict.fromkeys(waiting))
            for at in range(0, len(waiting), 500):
                part = waiting[at:at + 500]
                qs = ", ".join("?" * len(part))
                for column in ("id", "array_id"):  # two indexed lookups, not one OR scan
                    for r in self._db.execute(f"SELECT * FROM jobs WHERE state IN ({marks})"
                                              f" AND {column} IN ({qs})", [*st, *part]):
                        found[r["id"]] = r
        return [self._job(r, []) for r in sorted(found.values(), key=lambda r: r["seq"])]

    def array_facts(self, array_id: str) -> tuple[dict[str, int], bool, tuple[str, str] | None]:
        """What a dependency on array ``array_id`` needs: its tasks per state, whether one
        has started, and the first task (id, state) that ended FAILED, CANCELLED or TIMEOUT."""
        bad = [JobState.FAILED.value, JobState.CANCELLED.value, JobState.TIMEOUT.value]
        ran = {JobState.RUNNING.value, JobState.STAGING_OUT.value, JobState.SUCCEEDED.value}
        with self._lock:
            counts = {r["state"]: r["n"] for r in self._db.execute(
                "SELECT state, COUNT(*) AS n FROM jobs WHERE array_id = ? GROUP BY state",
                (array_id,))}
            started = bool(ran & counts.keys()) or self._db.execute(
                "SELECT 1 FROM jobs WHERE array_id = ? AND started_at IS NOT NULL LIMIT 1",
                (array_id,)).fetchone() is not None
            first = None
            if any(s in counts for s in bad):
                row = self._db.execute(
                    "SELECT id, state FROM jobs WHERE array_id = ? AND state IN (?, ?, ?)"
                    " ORDER BY seq LIMIT 1", (array_id, *bad)).fetchone()
                first = (row["id"], row["state"])
        return counts, started, first

    def depended_on(self, job_ids: Iterable[str]) -> set[str]:
        """Which of ``job_ids`` (job or array ids) some job's ``--dependency`` names."""
        ids = builtins.list(dict.fromkeys(job_ids))
        out: set[str] = set()
        with self._lock:
            for at in range(0, len(ids), 500):
                part = ids[at:at + 500]
                out.update(r[0] for r in self._db.execute(
                    "SELECT DISTINCT upstream FROM dependencies WHERE upstream IN"
                    f" ({', '.join('?' * len(part))})", part))
        return out

    # builtins.list: inside this class ``list`` names the method JobStore.list
    def _events(self, job_id: str) -> builtins.list[Event]:
        rows = self._db.execute(
            "SELECT time, state, reason FROM events WHERE job_id = ? ORDER BY n", (job_id,)
        ).fetchall()
        return [
            Event(time=_dt(r["time"]), state=JobState(r["state"]), reason=r["reason"]) for r in rows
        ]

    def _array_spec(self, array_id: str, raw: str | None = None) -> JobSpec:
        """A task's spec: its array's, parsed once (a listing of 10,000 tasks parses one)."""
        with self._lock:
            spec = self._array_specs.get(array_id)
            if spec is None:
                if raw is None:
                    raw = self._db.execute("SELECT spec FROM arrays WHERE id = ?",
                                           (array_id,)).fetchone()["spec"]
                spec = self._array_specs[array_id] = JobSpec.model_validate_json(raw)
                while len(self._array_specs) > _ARRAY_SPECS_KEPT:  # oldest out: scripts are big
                    del self._array_specs[next(iter(self._array_specs))]
            return spec

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
        array_id = row["array_id"]
        return Job(
            id=row["id"],
            owner=row["owner"],
            spec=self._array_spec(array_id) if array_id else
            self._spec(row["spec"]),
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
            array_id=array_id,
            array_index=row["array_index"],
            events=events,
        )
