"""``RedisJobStore``: the job records of every API instance and worker, in Redis.

Keys (``ns`` is ``Settings.queue_namespace``)::

    ns:job:<id>               the record as JSON (the whole JobRecord)
    ns:jobs                   sorted set of every job id by creation time
    ns:jobs:status:<status>   the same, per status (counts, listing by status)
    ns:jobs:owner:<owner>     the same, per API-key identity
    ns:jobs:finished          finished job ids by finish time (expiry)
    ns:idem:<owner>:<key>     job id created with that Idempotency-Key
    ns:batch:<id>             a batch record as JSON

Every change is an optimistic transaction (``WATCH`` the record, ``MULTI``/``EXEC`` the
new record and its index entries), so the indexes never disagree with the records.

**Attempts and fencing.** The queue delivers a job at least once; a delivery becomes a
run only through :meth:`RedisJobStore.start_attempt`, which increments ``attempts`` and
hands the runner that number as its *lease token*. Stage updates and the final transition
succeed only while the record is still ``running`` with the same ``attempts``: when a
job is redelivered because its first worker looked dead, the newer run fences the older
one out, and a late duplicate can neither overwrite a finished job nor publish a second
webhook (the final transition and the webhook deliveries commit in one ``EXEC``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from mlsharp.errors import ServiceUnavailable
from mlsharp.service.distributed.redis_conn import guarded
from mlsharp.service.jobs import STAGES, BatchRecord, JobRecord, JobStatus

#: What the queue does with a delivery, decided by :meth:`RedisJobStore.start_attempt`.
RUN, SKIP, EXHAUSTED = "run", "skip", "exhausted"


class DuplicateJob(sqlite3.IntegrityError):
    """The Idempotency-Key is taken. ``submit`` treats a JobStore's duplicate signal as an
    ``sqlite3.IntegrityError`` (the embedded store's), hence the base class."""


class LeaseLost(Exception):
    """This run no longer owns the job (a newer attempt took over, or it was deleted)."""


def encode(job: JobRecord) -> str:
    """The record as JSON."""
    data = asdict(job)
    data["status"] = job.status.value
    data["formats"] = list(job.formats)
    return json.dumps(data, separators=(",", ":"))


def decode(raw: bytes | str) -> JobRecord:
    """A record from :func:`encode`'s JSON."""
    data = json.loads(raw)
    data["status"] = JobStatus(data["status"])
    data["formats"] = tuple(data["formats"])
    return JobRecord(**data)


class RedisJobStore:
    """The scale-out :class:`~mlsharp.service.jobs.JobStore` (see the module docstring).

    ``on_queued(job)`` is called after a queued job is stored: it puts the job on the
    task queue (in the embedded mode the store *is* the queue; here it feeds it). If that
    fails the record is removed again and the submission gets a 503.
    """

    def __init__(
        self, client: Any, namespace: str, on_queued: Callable[[JobRecord], None] | None = None
    ) -> None:
        self.client = client
        self.ns = namespace
        self.on_queued = on_queued

    # -- keys ----------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def _status(self, status: JobStatus | str) -> str:
        return f"{self.ns}:jobs:status:{JobStatus(status).value}"

    def _owner(self, owner: str) -> str:
        return f"{self.ns}:jobs:owner:{owner}"

    def _idem(self, owner: str | None, key: str) -> str:
        return f"{self.ns}:idem:{owner or ''}:{key}"

    # -- writes --------------------------------------------------------------------------

    def _index(self, pipe: Any, old: JobRecord | None, new: JobRecord) -> None:
        """Queue the index changes from ``old`` to ``new`` on a MULTI pipeline."""
        if old is None:
            pipe.zadd(f"{self.ns}:jobs", {new.id: new.created_at})
            if new.owner is not None:
                pipe.zadd(self._owner(new.owner), {new.id: new.created_at})
            if new.idempotency_key:
                pipe.set(self._idem(new.owner, new.idempotency_key), new.id)
        if old is None or old.status is not new.status:
            if old is not None:
                pipe.zrem(self._status(old.status), new.id)
            pipe.zadd(self._status(new.status), {new.id: new.created_at})
        if new.terminal and new.finished_at is not None:
            pipe.zadd(f"{self.ns}:jobs:finished", {new.id: new.finished_at})

    @guarded
    def add(self, job: JobRecord) -> JobRecord:
        """Persist a new job (and queue it); :class:`DuplicateJob` if its key is taken."""
        idem = self._idem(job.owner, job.idempotency_key) if job.idempotency_key else None

        def tx(pipe: Any) -> None:
            if idem is not None and pipe.exists(idem):
                raise DuplicateJob(job.idempotency_key)
            pipe.multi()
            pipe.set(self._job(job.id), encode(job))
            self._index(pipe, None, job)

        self.client.transaction(tx, *([idem] if idem else []))
        if job.status is JobStatus.QUEUED and self.on_queued is not None:
            try:
                self.on_queued(job)
            except Exception as error:  # the queue refused it: do not keep an orphan record
                self.delete(job.id)
                if isinstance(error, ServiceUnavailable):
                    raise
                raise ServiceUnavailable(
                    f"the job could not be queued ({type(error).__name__}); retry later"
                ) from error
        return job

    def _transact(
        self,
        job_id: str,
        change: Callable[[JobRecord], JobRecord | None],
        extra: Callable[[Any, JobRecord], None] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Apply ``change`` atomically; ``(record, changed)``. KeyError if the job is gone.

        ``change`` returns the new record (version and ``updated_at`` are bumped here) or
        ``None`` for "leave it"; ``extra(pipe, new)`` may queue more commands in the same
        MULTI (webhook deliveries).
        """
        key = self._job(job_id)
        outcome: list[Any] = []

        def tx(pipe: Any) -> None:
            outcome.clear()
            raw = pipe.get(key)
            if raw is None:
                raise KeyError(job_id)
            current = decode(raw)
            new = change(current)
            if new is None:
                outcome.extend([current, False])
                return
            new = replace(new, version=current.version + 1, updated_at=time.time())
            pipe.multi()
            pipe.set(key, encode(new))
            self._index(pipe, current, new)
            if extra is not None:
                extra(pipe, new)
            outcome.extend([new, True])

        self.client.transaction(tx, key)
        return outcome[0], outcome[1]

    @guarded
    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Apply ``changes``, bump ``version``/``updated_at``; KeyError if the job is gone."""
        return self._transact(job_id, lambda job: replace(job, **changes))[0]

    @guarded
    def delete(self, job_id: str) -> None:
        """Forget a job and its index entries (its files are the storage's business)."""
        raw = self.client.get(self._job(job_id))
        if raw is None:
            return
        job = decode(raw)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._job(job_id))
        pipe.zrem(f"{self.ns}:jobs", job_id)
        pipe.zrem(f"{self.ns}:jobs:finished", job_id)
        for status in JobStatus:
            pipe.zrem(self._status(status), job_id)
        if job.owner is not None:
            pipe.zrem(self._owner(job.owner), job_id)
        if job.idempotency_key:
            pipe.delete(self._idem(job.owner, job.idempotency_key))
        pipe.execute()

    @guarded
    def cancel_queued(self, job_id: str) -> JobRecord | None:
        """Cancel the job if still queued; its queue message is then skipped by workers."""

        def change(job: JobRecord) -> JobRecord | None:
            if job.status is not JobStatus.QUEUED:
                return None
            return replace(
                job, status=JobStatus.CANCELED, stage="canceled", finished_at=time.time()
            )

        try:
            job, changed = self._transact(job_id, change)
        except KeyError:
            return None
        return job if changed else None

    def claim_next(self) -> JobRecord | None:
        """Never: in this mode jobs come from the task queue (:meth:`start_attempt`)."""
        return None

    def requeue_running(self) -> int:
        """Nothing to do: the task queue redelivers the jobs of dead workers."""
        return 0

    # -- reads ---------------------------------------------------------------------------

    @guarded
    def get(self, job_id: str) -> JobRecord | None:
        """The job with ``job_id``, or ``None``."""
        raw = self.client.get(self._job(job_id))
        return None if raw is None else decode(raw)

    @guarded
    def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        """The job an earlier request with this ``Idempotency-Key`` created, if any."""
        job_id = self.client.get(self._idem(owner, key))
        return None if job_id is None else self.get(job_id.decode())

    @guarded
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
        sources = [self._status(status) if status is not None else f"{self.ns}:jobs"]
        if owner is not None:
            sources.append(self._owner(owner))
        if len(sources) == 1:
            ids = [i.decode() for i in self.client.zrevrange(sources[0], 0, -1)]
        else:
            ids = [i.decode() for i in reversed(self.client.zinter(sources))]
        if batch_id is not None:
            batch = self.get_batch(batch_id)
            wanted = set(batch.job_ids) if batch else set()
            ids = [i for i in ids if i in wanted]
        page = self.jobs_of_batch(ids[offset : offset + limit])
        return page, len(ids)

    @guarded
    def jobs_of_batch(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """The jobs with these ids, in the given order (missing ones skipped)."""
        if not job_ids:
            return []
        raws = self.client.mget([self._job(j) for j in job_ids])
        return [decode(raw) for raw in raws if raw is not None]

    @guarded
    def counts(self) -> dict[str, int]:
        """Number of jobs per status, over the whole cluster."""
        pipe = self.client.pipeline(transaction=False)
        for status in JobStatus:
            pipe.zcard(self._status(status))
        return {s.value: int(n) for s, n in zip(JobStatus, pipe.execute(), strict=True)}

    @guarded
    def expired(self, finished_before: float) -> list[str]:
        """Ids of finished jobs that ended before ``finished_before``."""
        found = self.client.zrangebyscore(f"{self.ns}:jobs:finished", "-inf", finished_before)
        return [i.decode() for i in found]

    @guarded
    def add_batch(self, batch: BatchRecord) -> BatchRecord:
        """Persist a batch record."""
        data = asdict(batch)
        data["job_ids"] = list(batch.job_ids)
        self.client.set(f"{self.ns}:batch:{batch.id}", json.dumps(data))
        return batch

    @guarded
    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with ``batch_id``, or ``None``."""
        raw = self.client.get(f"{self.ns}:batch:{batch_id}")
        if raw is None:
            return None
        data = json.loads(raw)
        data["job_ids"] = tuple(data["job_ids"])
        return BatchRecord(**data)

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()

    # -- attempts (workers) --------------------------------------------------------------

    def start_attempt(self, job_id: str, max_attempts: int) -> tuple[str, JobRecord | None]:
        """Turn one queue delivery into a run; ``(RUN | SKIP | EXHAUSTED, record)``.

        * SKIP: the job is gone or finished (a duplicate or late delivery) - ack it.
        * EXHAUSTED: it already ran ``max_attempts`` times (e.g. every run killed its
          worker); it is now failed with the last error kept - publish that.
        * RUN: ``record.attempts`` is this run's lease token.

        Redis errors propagate (the worker retries the delivery).
        """
        now = time.time()

        def change(job: JobRecord) -> JobRecord | None:
            if job.terminal:
                return None
            if job.cancel_requested:
                return replace(job, status=JobStatus.CANCELED, stage="canceled", finished_at=now)
            if job.attempts >= max_attempts:
                last = (job.error or {}).get("message", "its worker stopped before finishing")
                error = {
                    "code": "too_many_attempts",
                    "message": f"the job ran {job.attempts} times without finishing; last: {last}",
                }
                return replace(
                    job, status=JobStatus.FAILED, stage="failed", finished_at=now, error=error
                )
            return replace(
                job,
                status=JobStatus.RUNNING,
                stage="decode",
                progress=STAGES["decode"],
                started_at=now,
                attempts=job.attempts + 1,
            )

        try:
            job, changed = self._transact(job_id, change)
        except KeyError:
            return SKIP, None
        if not changed:
            return SKIP, job
        if job.status is JobStatus.RUNNING:
            return RUN, job
        return EXHAUSTED, job

    def advance(self, job_id: str, token: int, stage: str) -> JobRecord:
        """Record that ``stage`` started; :class:`LeaseLost` if this run was fenced out."""

        def change(job: JobRecord) -> JobRecord:
            if job.status is not JobStatus.RUNNING or job.attempts != token:
                raise LeaseLost(job_id)
            return replace(job, stage=stage, progress=STAGES[stage])

        try:
            return self._transact(job_id, change)[0]
        except KeyError:
            raise LeaseLost(job_id) from None

    def finish(
        self,
        job_id: str,
        token: int,
        extra: Callable[[Any, JobRecord], None] | None = None,
        **changes: Any,
    ) -> JobRecord | None:
        """The fenced final (or retry) transition; ``None`` if this run lost its lease.

        ``extra(pipe, new)`` queues commands committed together with it (webhooks).
        """

        def change(job: JobRecord) -> JobRecord | None:
            if job.status is not JobStatus.RUNNING or job.attempts != token:
                return None
            return replace(job, **changes)

        try:
            job, changed = self._transact(job_id, change, extra)
        except KeyError:
            return None
        return job if changed else None
