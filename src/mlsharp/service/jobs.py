"""Job records and where they live.

A job is one photo to turn into 3D files. Its record is persisted *before* any work starts
and after every change, so a restart loses nothing: queued jobs stay queued, a job that was
running when the process died is queued again, finished jobs stay downloadable until they
expire.

``JobStore`` is the interface; ``SQLiteJobStore`` is the embedded default (one file, no
server). The store is also the embedded queue: :meth:`JobStore.claim_next` atomically moves
the oldest queued job to ``running``.

Every update bumps the record's ``version`` so event streams can tell what changed.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Protocol


class JobStatus(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


#: Stages a job reports, in order, with the progress fraction reached when each starts.
#: A panorama's job goes decode, ``views`` (cutting), ``view K/N`` for each batch of views
#: (see :func:`stage_progress`), ``merge``, write, done.
STAGES: dict[str, float] = {
    "queued": 0.0,
    "decode": 0.05,
    "preprocess": 0.1,
    "inference": 0.15,
    "postprocess": 0.85,
    "write": 0.92,
    "done": 1.0,
    "views": 0.08,
    "merge": 0.88,
}


_VIEW_STAGE = re.compile(r"^view (\d{1,4})/(\d{1,4})$")


def stage_progress(stage: str) -> float:
    """The progress a job has reached when ``stage`` starts; a panorama's ``view K/N``
    (K-1 of N views done) lies between 0.1 and 0.85.

    Raises:
        KeyError: an unknown stage.
    """
    match = _VIEW_STAGE.match(stage)
    if match is None:
        return STAGES[stage]
    done, total = int(match.group(1)) - 1, max(1, int(match.group(2)))
    return 0.1 + 0.75 * min(max(done / total, 0.0), 1.0)


def new_id(prefix: str) -> str:
    """A random, URL-safe, unguessable identifier such as ``job_3kTz...``."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"


@dataclass(frozen=True)
class JobRecord:
    """Everything known about one job; immutable, replaced on each update."""

    id: str
    status: JobStatus = JobStatus.QUEUED
    stage: str = "queued"
    progress: float = 0.0
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    input_name: str = "image"
    input_sha256: str = ""
    input_suffix: str = ""
    focal_mm: float | None = None
    formats: tuple[str, ...] = ("ply",)
    #: format -> file name inside the job's output folder
    outputs: dict[str, str] = field(default_factory=dict)
    #: seconds per stage (decode, preprocess, inference, postprocess, write, total)
    timings: dict[str, float] = field(default_factory=dict)
    #: ``{"code": ..., "message": ...}`` for a failed job
    error: dict[str, str] | None = None
    #: how many splats to keep: ``{"max_splats": N, "min_opacity": A}`` (those given)
    density: dict[str, Any] = field(default_factory=dict)
    #: what the result holds: ``{"splats": N, "bytes": {format: size}}``
    stats: dict[str, Any] = field(default_factory=dict)
    batch_id: str | None = None
    owner: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    cache_key: str | None = None
    cached: bool = False
    attempts: int = 0
    cancel_requested: bool = False
    version: int = 0
    #: a 360° panorama: cut into views, predicted and merged into one scene
    panorama: bool = False

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more."""
        return self.status.terminal


@dataclass(frozen=True)
class BatchRecord:
    """A group of jobs submitted together."""

    id: str
    job_ids: tuple[str, ...]
    created_at: float = field(default_factory=time.time)
    owner: str | None = None


class JobStore(Protocol):
    """Persistence of jobs and batches (embedded: SQLite; scale-out: a shared store)."""

    def add(self, job: JobRecord) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def update(self, job_id: str, **changes: Any) -> JobRecord: ...
    def delete(self, job_id: str) -> None: ...
    def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None: ...
    def list(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: JobStatus | None = None,
        batch_id: str | None = None,
        owner: str | None = None,
    ) -> tuple[list[JobRecord], int]: ...
    def jobs_of_batch(self, job_ids: Sequence[str]) -> list[JobRecord]: ...
    def claim_next(self) -> JobRecord | None: ...
    def cancel_queued(self, job_id: str) -> JobRecord | None: ...
    def requeue_running(self) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def expired(self, finished_before: float) -> list[str]: ...
    def add_batch(self, batch: BatchRecord) -> BatchRecord: ...
    def get_batch(self, batch_id: str) -> BatchRecord | None: ...
    def close(self) -> None: ...


_JSON_FIELDS = {"formats", "outputs", "timings", "error", "density", "stats"}
# Columns added after the first release, with their SQL definition: an older database
# gets them on open (ALTER TABLE ... ADD COLUMN), so its jobs stay readable.
_ADDED_COLUMNS = {
    "density": "TEXT NOT NULL DEFAULT '{}'",
    "stats": "TEXT NOT NULL DEFAULT '{}'",
    "panorama": "INTEGER NOT NULL DEFAULT 0",
}
_BOOL_FIELDS = {"cached", "cancel_requested", "panorama"}
_COLUMNS = [f.name for f in fields(JobRecord)]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    progress REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    input_name TEXT NOT NULL,
    input_sha256 TEXT NOT NULL,
    input_suffix TEXT NOT NULL,
    focal_mm REAL,
    formats TEXT NOT NULL,
    outputs TEXT NOT NULL,
    timings TEXT NOT NULL,
    error TEXT,
    density TEXT NOT NULL DEFAULT '{}',
    stats TEXT NOT NULL DEFAULT '{}',
    batch_id TEXT,
    owner TEXT,
    idempotency_key TEXT,
    request_hash TEXT,
    cache_key TEXT,
    cached INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL,
    version INTEGER NOT NULL,
    panorama INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (coalesce(owner, ''), idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    job_ids TEXT NOT NULL,
    created_at REAL NOT NULL,
    owner TEXT
);
"""


def _to_row(job: JobRecord) -> list[Any]:
    row = []
    for name in _COLUMNS:
        value = getattr(job, name)
        if name == "status":
            value = value.value
        elif name in _JSON_FIELDS:
            value = (
                None if value is None else json.dumps(list(value) if name == "formats" else value)
            )
        elif name in _BOOL_FIELDS:
            value = int(value)
        row.append(value)
    return row


def _from_row(row: sqlite3.Row) -> JobRecord:
    values: dict[str, Any] = dict(row)
    values["status"] = JobStatus(values["status"])
    for name in _JSON_FIELDS:
        raw = values[name]
        values[name] = None if raw is None else json.loads(raw)
    values["formats"] = tuple(values["formats"])
    for name in _BOOL_FIELDS:
        values[name] = bool(values[name])
    return JobRecord(**values)


class SQLiteJobStore:
    """The embedded :class:`JobStore`: one SQLite file in WAL mode, safe across threads.

    Several processes may share the file (SQLite locks it); one connection per store,
    guarded by a lock, is plenty for a single-GPU service.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Give a database made by an earlier version the columns added since."""
        with self._tx() as db:
            present = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def add(self, job: JobRecord) -> JobRecord:
        """Persist a new job; raises ``sqlite3.IntegrityError`` on a duplicate id or key."""
        placeholders = ", ".join("?" for _ in _COLUMNS)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({placeholders})", _to_row(job)
            )
        return job

    def get(self, job_id: str) -> JobRecord | None:
        """The job with ``job_id``, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _from_row(row)

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Apply ``changes``, bump ``version`` and ``updated_at``; returns the new record.

        Raises ``KeyError`` if the job no longer exists (deleted meanwhile).
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            current = _from_row(row)
            new = replace(current, **changes, version=current.version + 1, updated_at=time.time())
            names = [n for n in _COLUMNS if n != "id"]
            values = dict(zip(_COLUMNS, _to_row(new), strict=True))
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{n} = ?' for n in names)} WHERE id = ?",
                [values[n] for n in names] + [job_id],
            )
        return new

    def delete(self, job_id: str) -> None:
        """Forget a job (its files are the storage's business)."""
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        """The job an earlier request with this ``Idempotency-Key`` created, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE coalesce(owner, '') = ? AND idempotency_key = ?",
                (owner or "", key),
            ).fetchone()
        return None if row is None else _from_row(row)

    def list(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: JobStatus | None = None,
        batch_id: str | None = None,
        owner: str | None = None,
    ) -> tuple[list[JobRecord], int]:
        """A page of jobs, newest first, and the total matching the filters."""
        where, params = [], []
        for column, value in (("status", status and status.value), ("batch_id", batch_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM jobs {clause}", params).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [_from_row(r) for r in rows], int(total)

    def jobs_of_batch(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """The jobs with these ids, in the given order (missing ones skipped)."""
        if not job_ids:
            return []
        marks = ", ".join("?" for _ in job_ids)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE id IN ({marks})", list(job_ids)
            ).fetchall()
        found = {row["id"]: _from_row(row) for row in rows}
        return [found[j] for j in job_ids if j in found]

    def claim_next(self) -> JobRecord | None:
        """Atomically move the oldest queued job to ``running`` and return it."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            now = time.time()
            db.execute(
                "UPDATE jobs SET status = 'running', stage = 'decode', progress = ?, "
                "started_at = ?, updated_at = ?, attempts = attempts + 1, "
                "version = version + 1 WHERE id = ? AND status = 'queued'",
                (STAGES["decode"], now, now, row["id"]),
            )
            claimed = db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return _from_row(claimed)

    def cancel_queued(self, job_id: str) -> JobRecord | None:
        """Cancel the job if it is still queued (atomically); ``None`` if it was not."""
        with self._tx() as db:
            now = time.time()
            cursor = db.execute(
                "UPDATE jobs SET status = 'canceled', stage = 'canceled', finished_at = ?, "
                "updated_at = ?, version = version + 1 WHERE id = ? AND status = 'queued'",
                (now, now, job_id),
            )
        return self.get(job_id) if cursor.rowcount else None

    def requeue_running(self) -> int:
        """Put jobs left ``running`` by a dead process back in the queue; returns how many."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = 'queued', stage = 'queued', progress = 0, "
                "started_at = NULL, updated_at = ?, version = version + 1 "
                "WHERE status = 'running'",
                (time.time(),),
            )
        return cursor.rowcount

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero included)."""
        counts = {status.value: 0 for status in JobStatus}
        with self._lock:
            for row in self._db.execute("SELECT status, count(*) FROM jobs GROUP BY status"):
                counts[row[0]] = int(row[1])
        return counts

    def expired(self, finished_before: float) -> list[str]:
        """Ids of finished jobs that ended before ``finished_before``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') "
                "AND finished_at IS NOT NULL AND finished_at < ?",
                (finished_before,),
            ).fetchall()
        return [r[0] for r in rows]

    def add_batch(self, batch: BatchRecord) -> BatchRecord:
        """Persist a batch record."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO batches (id, job_ids, created_at, owner) VALUES (?, ?, ?, ?)",
                (batch.id, json.dumps(list(batch.job_ids)), batch.created_at, batch.owner),
            )
        return batch

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with ``batch_id``, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        return BatchRecord(
            id=row["id"],
            job_ids=tuple(json.loads(row["job_ids"])),
            created_at=row["created_at"],
            owner=row["owner"],
        )

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()
