"""``SQLiteJobStore``: the embedded :class:`~mlsharp.service.jobs.ports.JobStore`.

The ``jobs`` and ``batches`` tables of the embedded database
(:class:`~mlsharp.service.database.Database`, shared with the outbox and webhooks). The
store is also the embedded queue: :meth:`SQLiteJobStore.claim_next` atomically moves the
oldest queued job that is due (``not_before``, set by a retry's backoff) to ``running``.
Each write is one ``BEGIN IMMEDIATE`` transaction applying a rule of
:mod:`~mlsharp.service.jobs.transitions`, with the outbox entry of a job's end.

A record too damaged to decode is left out of reads (and logged); a queued one is failed
on the way (``corrupt_record``), so it never blocks the jobs behind it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from mlsharp.service.database import Database
from mlsharp.service.jobs import transitions
from mlsharp.service.jobs.model import (
    BatchRecord,
    CorruptRecord,
    DuplicateJob,
    JobRecord,
    JobStatus,
    LeaseLost,
    check_room,
    checked_record,
    encode,
    outcome_event,
)
from mlsharp.service.outbox import SQLITE_SCHEMA as OUTBOX_SCHEMA

log = logging.getLogger("mlsharp.service")

_JSON_FIELDS = ("formats", "outputs", "timings", "error", "density", "stats")
_BOOL_FIELDS = ("cached", "cancel_requested", "panorama")
# Columns added after the first release, with their SQL definition: an older database
# gets them on open (ALTER TABLE ... ADD COLUMN), so its jobs stay readable.
_ADDED_COLUMNS = {
    "density": "TEXT NOT NULL DEFAULT '{}'",
    "stats": "TEXT NOT NULL DEFAULT '{}'",
    "panorama": "INTEGER NOT NULL DEFAULT 0",
    "not_before": "REAL",  # when a retry is due
}
_COLUMNS = [f.name for f in fields(JobRecord)]
_CORRUPT_ERROR = {"code": "corrupt_record", "message": "the job's stored record is malformed"}

SCHEMA = (
    """
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
    panorama INTEGER NOT NULL DEFAULT 0,
    not_before REAL
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
    + OUTBOX_SCHEMA
)


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
    """The record of a row; :class:`CorruptRecord` if it is malformed."""
    values: dict[str, Any] = {name: row[name] for name in _COLUMNS}
    try:
        for name in _JSON_FIELDS:
            raw = values[name]
            values[name] = None if raw is None else json.loads(raw)
    except (TypeError, ValueError) as error:
        raise CorruptRecord(f"{type(error).__name__}: {error}") from None
    for name in _BOOL_FIELDS:
        values[name] = bool(values[name])
    return checked_record(values)


def _readable(rows: Sequence[sqlite3.Row]) -> list[JobRecord]:
    """The records of ``rows``, leaving out (and logging) malformed ones."""
    found = []
    for row in rows:
        try:
            found.append(_from_row(row))
        except CorruptRecord as error:
            log.warning("job %s: its stored record is malformed, skipped (%s)", row["id"], error)
    return found


def _readable_one(row: sqlite3.Row | None) -> JobRecord | None:
    return next(iter(_readable([row])), None) if row is not None else None


class SQLiteJobStore:
    """Jobs in the embedded database (see the module docstring).

    ``db`` is the shared :class:`Database`, or a path to open one of its own (tests and
    tools that look at a data directory).
    """

    def __init__(self, db: Database | Path) -> None:
        self._owns_db = not isinstance(db, Database)
        if isinstance(db, Database):
            self.db = db
        else:
            self.db = Database(Path(db), what="the job database", schema=SCHEMA)
        self.path = self.db.path
        with self.db.write() as conn:  # a database made by an earlier version
            present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for name, definition in _ADDED_COLUMNS.items():
                if name not in present:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")

    # -- writes --------------------------------------------------------------------------

    def _insert(self, db: sqlite3.Connection, job: JobRecord) -> None:
        marks = ", ".join("?" for _ in _COLUMNS)
        db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})", _to_row(job))

    def _publish(self, db: sqlite3.Connection, old: JobRecord | None, new: JobRecord) -> None:
        """The outbox entry of ``new``'s end, in the caller's transaction."""
        event = outcome_event(old, new)
        if event is not None:
            db.execute(
                "INSERT OR IGNORE INTO outbox (key, event, owner, record, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (f"{new.id}:{event}", event, new.owner, encode(new), time.time()),
            )

    def add(self, job: JobRecord, *, max_queued: int | None = None) -> JobRecord:
        """Persist one new job (see :meth:`add_many`)."""
        return self.add_many([job], max_queued=max_queued)[0]

    def add_many(
        self, jobs: Sequence[JobRecord], *, max_queued: int | None = None
    ) -> list[JobRecord]:
        """Persist new jobs in one transaction: all of them or none."""
        adding = sum(1 for job in jobs if job.status is JobStatus.QUEUED)
        with self.db.write() as db:
            if max_queued is not None:
                queued = db.execute("SELECT count(*) FROM jobs WHERE status = 'queued'")
                check_room(int(queued.fetchone()[0]), adding, max_queued)
            for job in jobs:
                try:
                    self._insert(db, job)
                except sqlite3.IntegrityError as error:
                    raise DuplicateJob(str(error)) from None
                self._publish(db, None, job)
        return list(jobs)

    def _transact(
        self,
        job_id: str,
        change: Callable[[JobRecord], JobRecord | None],
        *,
        not_before: float | None = None,
    ) -> tuple[JobRecord, bool]:
        """Apply ``change`` atomically: ``(record, changed)``; ``KeyError`` if the job is
        gone (or too damaged to read)."""
        with self.db.write() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            current = _readable_one(row)
            if current is None:
                raise KeyError(job_id)
            new = change(current)
            if new is None:
                return current, False
            new = replace(new, version=current.version + 1, updated_at=time.time())
            names = [n for n in _COLUMNS if n != "id"]
            values = dict(zip(_COLUMNS, _to_row(new), strict=True))
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{n} = ?' for n in names)}, not_before = ?"
                " WHERE id = ?",
                [values[n] for n in names] + [not_before, job_id],
            )
            self._publish(db, current, new)
        return new, True

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Apply ``changes``, bump ``version`` and ``updated_at``; ``KeyError`` if gone."""
        return self._transact(job_id, lambda job: replace(job, **changes))[0]

    def delete(self, job_id: str) -> None:
        """Forget a job (its files are the storage's business)."""
        with self.db.write() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def cancel_queued(self, job_id: str) -> JobRecord | None:
        """Cancel the job if it is still queued; ``None`` if it was not."""
        try:
            job, changed = self._transact(job_id, transitions.canceled_if_queued)
        except KeyError:
            return None
        return job if changed else None

    def add_batch(self, batch: BatchRecord) -> BatchRecord:
        """Persist a batch record."""
        with self.db.write() as db:
            db.execute(
                "INSERT INTO batches (id, job_ids, created_at, owner) VALUES (?, ?, ?, ?)",
                (batch.id, json.dumps(list(batch.job_ids)), batch.created_at, batch.owner),
            )
        return batch

    # -- runs ----------------------------------------------------------------------------

    def advance(self, job_id: str, token: int, stage: str) -> JobRecord:
        """Record that run ``token`` started ``stage``; ``LeaseLost`` if it may not."""
        try:
            return self._transact(job_id, lambda job: transitions.advanced(job, token, stage))[0]
        except KeyError:
            raise LeaseLost(job_id) from None

    def finish(self, job_id: str, token: int, **changes: Any) -> JobRecord | None:
        """Run ``token``'s final change with its outbox entry; ``None`` if it may not."""
        try:
            job, changed = self._transact(
                job_id, lambda job: transitions.finished(job, token, changes)
            )
        except KeyError:
            return None
        return job if changed else None

    def requeue(
        self,
        job_id: str,
        token: int,
        *,
        delay_seconds: float = 0.0,
        uncount: bool = False,
        error: dict[str, str] | None = None,
    ) -> JobRecord | None:
        """Run ``token``'s job queued again, due after ``delay_seconds``."""
        try:
            job, changed = self._transact(
                job_id,
                lambda job: transitions.requeued(job, token, uncount=uncount, error=error),
                not_before=time.time() + delay_seconds if delay_seconds > 0 else None,
            )
        except KeyError:
            return None
        return job if changed else None

    def renew_leases(self, tokens: Mapping[str, int]) -> None:
        """Nothing to do: one process owns the embedded queue's runs."""

    def claim_next(self) -> JobRecord | None:
        """Atomically move the oldest due queued job to ``running`` and return it.

        A malformed queued record is failed on the way (``corrupt_record``).
        """
        while True:
            now = time.time()
            with self.db.write() as db:
                row = db.execute(
                    "SELECT * FROM jobs WHERE status = 'queued'"
                    " AND (not_before IS NULL OR not_before <= ?)"
                    " ORDER BY created_at, id LIMIT 1",
                    (now,),
                ).fetchone()
                if row is None:
                    return None
                current = _readable_one(row)
                if current is None:
                    db.execute(
                        "UPDATE jobs SET status = 'failed', stage = 'failed', finished_at = ?,"
                        " error = ? WHERE id = ?",
                        (now, json.dumps(_CORRUPT_ERROR), row["id"]),
                    )
                    continue
                claimed = replace(
                    transitions.started(current, now), version=current.version + 1, updated_at=now
                )
                names = [n for n in _COLUMNS if n != "id"]
                values = dict(zip(_COLUMNS, _to_row(claimed), strict=True))
                db.execute(
                    f"UPDATE jobs SET {', '.join(f'{n} = ?' for n in names)}, not_before = NULL"
                    " WHERE id = ?",
                    [values[n] for n in names] + [claimed.id],
                )
            return claimed

    def requeue_running(self) -> int:
        """Put jobs left ``running`` by a dead process back in the queue; how many."""
        with self.db.write() as db:
            cursor = db.execute(
                "UPDATE jobs SET status = 'queued', stage = 'queued', progress = 0, "
                "started_at = NULL, updated_at = ?, version = version + 1, not_before = NULL "
                "WHERE status = 'running'",
                (time.time(),),
            )
        return cursor.rowcount

    # -- reads ---------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The job with ``job_id``, or ``None``."""
        with self.db.read() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _readable_one(row)

    def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        """The job an earlier request with this ``Idempotency-Key`` created, if any."""
        with self.db.read() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE coalesce(owner, '') = ? AND idempotency_key = ?",
                (owner or "", key),
            ).fetchone()
        return _readable_one(row)

    def page(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: JobStatus | None = None,
        owner: str | None = None,
    ) -> tuple[list[JobRecord], int]:
        """A page of jobs, newest first, and the total matching the filters."""
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.db.read() as db:
            total = db.execute(f"SELECT count(*) FROM jobs {clause}", params).fetchone()[0]
            rows = db.execute(
                f"SELECT * FROM jobs {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return _readable(rows), int(total)

    def jobs_by_ids(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """The jobs with these ids, in the given order (missing ones skipped)."""
        if not job_ids:
            return []
        marks = ", ".join("?" for _ in job_ids)
        with self.db.read() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE id IN ({marks})", list(job_ids))
            found = {job.id: job for job in _readable(rows.fetchall())}
        return [found[j] for j in job_ids if j in found]

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero included)."""
        counts = {status.value: 0 for status in JobStatus}
        with self.db.read() as db:
            for status, number in db.execute("SELECT status, count(*) FROM jobs GROUP BY status"):
                if status in counts:  # a malformed status is nobody's count
                    counts[status] = int(number)
        return counts

    def expired(self, finished_before: float) -> list[str]:
        """Ids of finished jobs that ended before ``finished_before``."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') "
                "AND finished_at IS NOT NULL AND finished_at < ?",
                (finished_before,),
            ).fetchall()
        return [r[0] for r in rows]

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with ``batch_id``, or ``None``."""
        with self.db.read() as db:
            row = db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            return None
        return BatchRecord(
            id=row["id"],
            job_ids=tuple(json.loads(row["job_ids"])),
            created_at=row["created_at"],
            owner=row["owner"],
        )

    def close(self) -> None:
        """Close the database if this store opened it."""
        if self._owns_db:
            self.db.close()
