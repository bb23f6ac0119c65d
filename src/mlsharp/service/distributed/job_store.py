"""``RedisJobStore``: the job records of every API instance and worker, in Redis.

Keys (``ns`` is ``Settings.queue_namespace``)::

    ns:job:<id>               the record as JSON (the whole JobRecord)
    ns:jobs                   sorted set of every job id by creation time
    ns:jobs:status:<status>   the same, per status (counts, listing by status)
    ns:jobs:owner:<owner>     the same, per API-key identity
    ns:jobs:finished          finished job ids by finish time (expiry)
    ns:idem:<owner>:<key>     job id created with that Idempotency-Key
    ns:batch:<id>             a batch record as JSON
    ns:lease:<id>             exists while a run of the job is alive (TTL, see below)
    ns:sending:<id>           exists while a queue message for the job is on its way (TTL)

Every change is an optimistic transaction (``WATCH`` the record, ``MULTI``/``EXEC`` the
new record and its index entries), so the indexes never disagree with the records.

**Attempts and fencing.** The queue delivers a job at least once; a delivery becomes a
run only through :meth:`RedisJobStore.start_attempt`, which increments ``attempts`` and
hands the runner that number as its *lease token*. A run proves it is alive with the
``lease`` key, which its worker's heartbeat thread keeps setting with a TTL of
``queue_heartbeat_seconds`` (Redis expires it: Redis's clock, not the machines'). A
delivery of a job whose lease is alive is a duplicate and is skipped (the queue's
requeue after a Redis outage or between machines with skewed clocks); only a job whose
lease is gone is taken over by a new run. Stage updates and retry transitions succeed
only for the newest run; the final *success* of an older run that is still alive is
accepted while no newer run has produced a result (first result wins), so a run that
outlived a Redis outage keeps its work. The final transition and the webhook
deliveries commit in one ``EXEC``, so a job ends once and publishes each event once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from mlsharp.service.distributed.redis_conn import guarded
from mlsharp.service.jobs import STAGES, BatchRecord, JobRecord, JobStatus, stage_progress

log = logging.getLogger("mlsharp.distributed")

#: What the queue does with a delivery, decided by :meth:`RedisJobStore.start_attempt`.
RUN, SKIP, EXHAUSTED = "run", "skip", "exhausted"
#: ... the job runs on a worker whose lease is alive (a duplicate delivery): ack it.
BUSY = "busy"
#: ... the job is ``running`` but no run holds its lease: take over after a pause.
ORPHAN = "orphan"

#: ``extra(pipe, new_record)``: more commands committed with a transition (webhooks).
Extra = Callable[[Any, JobRecord], None]


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
    task queue (in the embedded mode the store *is* the queue; here it feeds it). The
    record and its ``sending`` mark commit first; if the send then fails (Redis gone, the
    process killed), the job stays stored and the reconciler
    (:mod:`~mlsharp.service.distributed.reconcile`) sends it once the mark has expired.

    ``lease_seconds`` is how long a run's lease lives without a refresh (the heartbeat
    timeout); ``grace_seconds`` how long a sent message may take to show up in the queue.
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        on_queued: Callable[[JobRecord], None] | None = None,
        *,
        lease_seconds: float = 30.0,
        grace_seconds: float = 30.0,
    ) -> None:
        self.client = client
        self.ns = namespace
        self.on_queued = on_queued
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.grace_ms = max(1, int(grace_seconds * 1000))

    # -- keys ----------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def _status(self, status: JobStatus | str) -> str:
        return f"{self.ns}:jobs:status:{JobStatus(status).value}"

    def _owner(self, owner: str) -> str:
        return f"{self.ns}:jobs:owner:{owner}"

    def _idem(self, owner: str | None, key: str) -> str:
        return f"{self.ns}:idem:{owner or ''}:{key}"

    def lease_key(self, job_id: str) -> str:
        """The key that exists while a run of ``job_id`` is alive."""
        return f"{self.ns}:lease:{job_id}"

    def sending_key(self, job_id: str) -> str:
        """The key that exists while a queue message of ``job_id`` is on its way."""
        return f"{self.ns}:sending:{job_id}"

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
        queued = job.status is JobStatus.QUEUED and self.on_queued is not None

        def tx(pipe: Any) -> None:
            if idem is not None and pipe.exists(idem):
                raise DuplicateJob(job.idempotency_key)
            pipe.multi()
            pipe.set(self._job(job.id), encode(job))
            self._index(pipe, None, job)
            if queued:
                pipe.set(self.sending_key(job.id), "1", px=self.grace_ms)

        self.client.transaction(tx, *([idem] if idem else []))
        if queued:
            assert self.on_queued is not None
            try:
                self.on_queued(job)
            except Exception as error:  # stored: the reconciler sends it after the grace
                log.warning(
                    "job %s stored but not queued yet (%s: %s); the reconciler will send it",
                    job.id,
                    type(error).__name__,
                    error,
                )
        return job

    def _transact(
        self,
        job_id: str,
        change: Callable[[JobRecord], JobRecord | None],
        extra: Extra | None = None,
        *,
        watch: Sequence[str] = (),
        before: Callable[[Any], None] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Apply ``change`` atomically; ``(record, changed)``. KeyError if the job is gone.

        ``change`` returns the new record (version and ``updated_at`` are bumped here) or
        ``None`` for "leave it"; ``extra(pipe, new)`` may queue more commands in the same
        MULTI (webhook deliveries). ``watch`` adds keys whose change aborts and reruns the
        transaction; ``before(pipe)`` reads them (immediate mode) before ``change`` runs.
        """
        key = self._job(job_id)
        outcome: list[Any] = []

        def tx(pipe: Any) -> None:
            outcome.clear()
            raw = pipe.get(key)
            if raw is None:
                raise KeyError(job_id)
            if before is not None:
                before(pipe)
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

        self.client.transaction(tx, key, *watch)
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
        pipe.delete(self._job(job_id), self.lease_key(job_id), self.sending_key(job_id))
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

    def start_attempt(
        self,
        job_id: str,
        max_attempts: int,
        *,
        take_over: bool = False,
        deliveries: Extra | None = None,
    ) -> tuple[str, JobRecord | None]:
        """Turn one queue delivery into a run; ``(outcome, record)``.

        * SKIP: the job is gone or finished (a duplicate or late delivery) - ack it.
        * BUSY: a live run holds the job's lease (the queue requeued a message whose
          worker only looked dead) - ack it; the attempt is not counted.
        * ORPHAN: the job is ``running`` but its lease is gone. Call again after a pause
          (a run that outlived a Redis outage renews its lease within one heartbeat);
          ``take_over=True`` then starts a new run if the lease is still gone.
        * EXHAUSTED: it already ran ``max_attempts`` times (e.g. every run killed its
          worker); it is now failed with the last error kept, committed together with
          ``deliveries`` (its webhook events).
        * RUN: ``record.attempts`` is this run's lease token; the lease is set.

        Redis errors propagate (the worker retries the delivery).
        """
        now = time.time()
        lease = self.lease_key(job_id)
        alive: list[bool] = []

        def read_lease(pipe: Any) -> None:
            alive[:] = [bool(pipe.exists(lease))]

        def change(job: JobRecord) -> JobRecord | None:
            if job.terminal:
                return None
            if job.status is JobStatus.RUNNING and (alive[0] or not take_over):
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

        def extra(pipe: Any, new: JobRecord) -> None:
            pipe.delete(self.sending_key(job_id))
            if new.status is JobStatus.RUNNING:
                pipe.set(lease, str(new.attempts), px=self.lease_ms)
                return
            pipe.delete(lease)
            if deliveries is not None:
                deliveries(pipe, new)

        try:
            job, changed = self._transact(job_id, change, extra, watch=[lease], before=read_lease)
        except KeyError:
            return SKIP, None
        if not changed:
            if job.status is JobStatus.RUNNING:
                return (BUSY if alive[0] else ORPHAN), job
            return SKIP, job
        if job.status is JobStatus.RUNNING:
            return RUN, job
        return EXHAUSTED, job

    def renew_leases(self, tokens: dict[str, int]) -> None:
        """Keep the leases of the runs in hand (``{job id: token}``) alive for one more
        ``lease_seconds``; called by the worker's heartbeat thread."""
        if not tokens:
            return
        pipe = self.client.pipeline(transaction=False)
        for job_id, token in tokens.items():
            pipe.set(self.lease_key(job_id), str(token), px=self.lease_ms)
        pipe.execute()

    def advance(self, job_id: str, token: int, stage: str) -> JobRecord:
        """Record that ``stage`` started; :class:`LeaseLost` if the job no longer runs.

        An older run still alive after a newer one took over keeps going without writing
        its stages (the newer run reports progress); the first result wins.
        """

        def change(job: JobRecord) -> JobRecord | None:
            if job.status is not JobStatus.RUNNING or job.attempts < token:
                raise LeaseLost(job_id)
            if job.attempts != token:
                return None
            return replace(job, stage=stage, progress=stage_progress(stage))

        try:
            return self._transact(job_id, change)[0]
        except KeyError:
            raise LeaseLost(job_id) from None

    def finish(
        self,
        job_id: str,
        token: int,
        extra: Extra | None = None,
        **changes: Any,
    ) -> JobRecord | None:
        """The fenced final transition; ``None`` if this run may not make it.

        The newest run may make any transition. An older run that is still alive (it
        outlived a Redis outage, or its worker's clock was off) may record a *success*
        while the job still runs: no newer run has a result yet, and its work is as good.
        ``extra(pipe, new)`` queues commands committed together with it (webhooks).
        """
        succeeded = changes.get("status") is JobStatus.SUCCEEDED

        def change(job: JobRecord) -> JobRecord | None:
            if job.status is not JobStatus.RUNNING or job.attempts < token:
                return None
            if job.attempts != token and not succeeded:
                return None
            return replace(job, **changes)

        def staged(pipe: Any, new: JobRecord) -> None:
            pipe.delete(self.lease_key(job_id))
            if extra is not None:
                extra(pipe, new)

        try:
            job, changed = self._transact(job_id, change, staged)
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
        """Put the newest run's job back to ``queued`` before its message is sent again.

        The ``sending`` mark (``delay_seconds`` plus the grace) commits with it, so if
        the send fails the reconciler sends the job later. ``uncount`` gives the attempt
        back (a worker handing its job back on shutdown did not fail it). ``None`` if this
        run is not the newest (nothing changes).
        """

        def change(job: JobRecord) -> JobRecord | None:
            if job.status is not JobStatus.RUNNING or job.attempts != token:
                return None
            changes: dict[str, Any] = {"status": JobStatus.QUEUED, "stage": "queued"}
            changes["progress"] = 0.0
            if uncount:
                changes["attempts"] = job.attempts - 1
            if error is not None:
                changes["error"] = error
            return replace(job, **changes)

        def staged(pipe: Any, _new: JobRecord) -> None:
            pipe.delete(self.lease_key(job_id))
            ms = int(delay_seconds * 1000) + self.grace_ms
            pipe.set(self.sending_key(job_id), "1", px=ms)

        try:
            job, changed = self._transact(job_id, change, staged)
        except KeyError:
            return None
        return job if changed else None

    def mark_sending(self, job_id: str, delay_seconds: float = 0.0) -> None:
        """Note that a message of ``job_id`` is being sent (the reconciler waits)."""
        ms = int(delay_seconds * 1000) + self.grace_ms
        self.client.set(self.sending_key(job_id), "1", px=ms)

    def unfinished(self) -> list[JobRecord]:
        """Every queued or running job (what the reconciler checks)."""
        ids: list[str] = []
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            ids += [i.decode() for i in self.client.zrange(self._status(status), 0, -1)]
        return [job for job in self.jobs_of_batch(ids) if not job.terminal]

    def settled(self, job_ids: Sequence[str]) -> set[str]:
        """The ids among ``job_ids`` that have a live lease or a message on its way."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(self.lease_key(job_id), self.sending_key(job_id))
        return {j for j, n in zip(job_ids, pipe.execute(), strict=True) if n}

    def fail_unfinished(
        self, job_id: str, error: dict[str, str], deliveries: Extra | None = None
    ) -> JobRecord | None:
        """Fail a queued or running job that no run holds (its queue message died),
        with its webhook deliveries in the same commit; ``None`` if it moved meanwhile."""
        lease = self.lease_key(job_id)
        alive: list[bool] = []

        def read_lease(pipe: Any) -> None:
            alive[:] = [bool(pipe.exists(lease))]

        def change(job: JobRecord) -> JobRecord | None:
            if job.terminal or alive[0]:
                return None
            return replace(
                job,
                status=JobStatus.FAILED,
                stage="failed",
                finished_at=time.time(),
                error=error,
            )

        def staged(pipe: Any, new: JobRecord) -> None:
            pipe.delete(self.sending_key(job_id))
            if deliveries is not None:
                deliveries(pipe, new)

        try:
            job, changed = self._transact(job_id, change, staged, watch=[lease], before=read_lease)
        except KeyError:
            return None
        return job if changed else None
