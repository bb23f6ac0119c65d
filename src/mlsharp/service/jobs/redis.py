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
    ns:outbox...              the outbox (mlsharp.service.outbox)

Every change is an optimistic transaction (``WATCH`` the record, ``MULTI``/``EXEC`` the
new record, its index entries and, when the job ends, its outbox entry), so indexes never
disagree with records and a job's end publishes its event once.

**Leases.** A run proves it is alive with the ``lease`` key, which its worker's heartbeat
keeps setting with a TTL of ``queue_heartbeat_seconds`` (Redis expires it: Redis's
clock, not the machines'). The queue (:mod:`mlsharp.service.queue.dramatiq`) turns a
delivery into a run only through :meth:`RedisJobStore.start_attempt`: a delivery of a job
whose lease is alive is a duplicate and is skipped; only a job whose lease is gone is
taken over. The rules themselves are :mod:`~mlsharp.service.jobs.transitions`'.
Connection errors are :class:`~mlsharp.errors.ServiceUnavailable`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from mlsharp.service import outbox
from mlsharp.service.jobs import transitions
from mlsharp.service.jobs.model import (
    BatchRecord,
    CorruptRecord,
    DuplicateJob,
    JobRecord,
    JobStatus,
    LeaseLost,
    check_room,
    decode,
    encode,
    outcome_event,
)
from mlsharp.service.redis_conn import guarded

log = logging.getLogger("mlsharp.distributed")


class RedisJobStore:
    """The scale-out :class:`~mlsharp.service.jobs.ports.JobStore` (module docstring).

    ``lease_seconds`` is how long a run's lease lives without a refresh (the heartbeat
    timeout); ``grace_seconds`` how long a sent message may take to show up in the queue.
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        *,
        lease_seconds: float = 30.0,
        grace_seconds: float = 30.0,
    ) -> None:
        self.client = client
        self.ns = namespace
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

    def _readable(self, raws: Sequence[bytes | None], ids: Sequence[str]) -> list[JobRecord]:
        """The records among ``raws``, leaving out (and logging) malformed ones."""
        found = []
        for job_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                found.append(decode(raw))
            except CorruptRecord as error:
                log.warning("job %s: its stored record is malformed, skipped (%s)", job_id, error)
        return found

    # -- writes --------------------------------------------------------------------------

    def _index(self, pipe: Any, old: JobRecord | None, new: JobRecord) -> None:
        """Queue the index and outbox changes from ``old`` to ``new`` on a MULTI."""
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
        event = outcome_event(old, new)
        if event is not None:
            now = time.time()
            entry = outbox.OutboxEntry(f"{new.id}:{event}", event, new.owner, encode(new), now)
            pipe.set(outbox.redis_entry(self.ns, entry.key), entry.to_json())
            pipe.zadd(outbox.redis_index(self.ns), {entry.key: now})

    def add(self, job: JobRecord, *, max_queued: int | None = None) -> JobRecord:
        """Persist one new job (see :meth:`add_many`)."""
        return self.add_many([job], max_queued=max_queued)[0]

    @guarded
    def add_many(
        self, jobs: Sequence[JobRecord], *, max_queued: int | None = None
    ) -> list[JobRecord]:
        """Persist new jobs in one transaction, all or none.

        With ``max_queued`` the queued count is read under ``WATCH``, so the check and
        the insert are atomic. Each queued job gets a ``sending`` mark (its message is on
        its way; the queue sends it after this returns).
        """
        keys = [self._idem(j.owner, j.idempotency_key) for j in jobs if j.idempotency_key]
        queued = [job for job in jobs if job.status is JobStatus.QUEUED]

        def tx(pipe: Any) -> None:
            if any(pipe.exists(key) for key in keys):
                raise DuplicateJob("the Idempotency-Key is taken")
            if max_queued is not None:
                check_room(int(pipe.zcard(self._status(JobStatus.QUEUED))), len(queued), max_queued)
            pipe.multi()
            for job in jobs:
                pipe.set(self._job(job.id), encode(job))
                self._index(pipe, None, job)
            for job in queued:
                pipe.set(self.sending_key(job.id), "1", px=self.grace_ms)

        watched = [*keys, self._status(JobStatus.QUEUED)] if max_queued is not None else keys
        self.client.transaction(tx, *watched)
        return list(jobs)

    def _transact(
        self,
        job_id: str,
        change: Callable[[JobRecord], JobRecord | None],
        extra: Callable[[Any, JobRecord], None] | None = None,
        *,
        watch: Sequence[str] = (),
        before: Callable[[Any], None] | None = None,
    ) -> tuple[JobRecord, bool]:
        """Apply ``change`` atomically: ``(record, changed)``; ``KeyError`` if the job is
        gone (or too damaged to read).

        ``extra(pipe, new)`` queues more commands in the same MULTI (lease and sending
        marks). ``watch`` adds keys whose change reruns the transaction; ``before(pipe)``
        reads them (immediate mode) before ``change`` runs.
        """
        key = self._job(job_id)
        outcome: list[Any] = []

        def tx(pipe: Any) -> None:
            outcome.clear()
            raw = pipe.get(key)
            if raw is None:
                raise KeyError(job_id)
            try:
                current = decode(raw)
            except CorruptRecord as error:
                log.warning("job %s: its stored record is malformed (%s)", job_id, error)
                raise KeyError(job_id) from None
            if before is not None:
                before(pipe)
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
        job = self._readable([raw], [job_id])
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._job(job_id), self.lease_key(job_id), self.sending_key(job_id))
        pipe.zrem(f"{self.ns}:jobs", job_id)
        pipe.zrem(f"{self.ns}:jobs:finished", job_id)
        for status in JobStatus:
            pipe.zrem(self._status(status), job_id)
        if job and job[0].owner is not None:
            pipe.zrem(self._owner(job[0].owner), job_id)
        if job and job[0].idempotency_key:
            pipe.delete(self._idem(job[0].owner, job[0].idempotency_key))
        pipe.execute()

    @guarded
    def cancel_queued(self, job_id: str) -> JobRecord | None:
        """Cancel the job if still queued; its queue message is then skipped by workers."""
        try:
            job, changed = self._transact(job_id, transitions.canceled_if_queued)
        except KeyError:
            return None
        return job if changed else None

    @guarded
    def add_batch(self, batch: BatchRecord) -> BatchRecord:
        """Persist a batch record."""
        data = asdict(batch)
        data["job_ids"] = list(batch.job_ids)
        self.client.set(f"{self.ns}:batch:{batch.id}", json.dumps(data))
        return batch

    # -- reads ---------------------------------------------------------------------------

    @guarded
    def get(self, job_id: str) -> JobRecord | None:
        """The job with ``job_id``, or ``None``."""
        found = self._readable([self.client.get(self._job(job_id))], [job_id])
        return found[0] if found else None

    @guarded
    def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        """The job an earlier request with this ``Idempotency-Key`` created, if any."""
        job_id = self.client.get(self._idem(owner, key))
        return None if job_id is None else self.get(job_id.decode())

    @guarded
    def page(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: JobStatus | None = None,
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
        return self.jobs_by_ids(ids[offset : offset + limit]), len(ids)

    @guarded
    def jobs_by_ids(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """The jobs with these ids, in the given order (missing ones skipped)."""
        if not job_ids:
            return []
        return self._readable(self.client.mget([self._job(j) for j in job_ids]), job_ids)

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
    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with ``batch_id``, or ``None``."""
        raw = self.client.get(f"{self.ns}:batch:{batch_id}")
        if raw is None:
            return None
        data = json.loads(raw)
        data["job_ids"] = tuple(data["job_ids"])
        return BatchRecord(**data)

    def close(self) -> None:
        """Nothing to release (the Redis client belongs to the composition root)."""

    # -- runs ----------------------------------------------------------------------------

    @guarded
    def start_attempt(
        self, job_id: str, max_attempts: int, *, take_over: bool = False
    ) -> tuple[str, JobRecord | None]:
        """Turn one queue delivery into a run: ``(outcome, record)``, the outcome one of
        :mod:`~mlsharp.service.jobs.transitions`' (RUN: ``record.attempts`` is the run's
        token and its lease is set; EXHAUSTED: the job ended, with its outbox entry)."""
        lease = self.lease_key(job_id)
        alive: list[bool] = []
        decision: list[str] = []

        def read_lease(pipe: Any) -> None:
            alive[:] = [bool(pipe.exists(lease))]

        def change(job: JobRecord) -> JobRecord | None:
            outcome, new = transitions.attempt_started(
                job,
                lease_alive=alive[0],
                take_over=take_over,
                max_attempts=max_attempts,
                now=time.time(),
            )
            decision[:] = [outcome]
            return new

        def marks(pipe: Any, new: JobRecord) -> None:
            pipe.delete(self.sending_key(job_id))
            if new.status is JobStatus.RUNNING:
                pipe.set(lease, str(new.attempts), px=self.lease_ms)
            else:
                pipe.delete(lease)

        try:
            job, _ = self._transact(job_id, change, marks, watch=[lease], before=read_lease)
        except KeyError:
            return transitions.SKIP, None
        return decision[0], job

    @guarded
    def renew_leases(self, tokens: Mapping[str, int]) -> None:
        """Keep the leases of the runs in hand alive for one more ``lease_seconds``."""
        if not tokens:
            return
        pipe = self.client.pipeline(transaction=False)
        for job_id, token in tokens.items():
            pipe.set(self.lease_key(job_id), str(token), px=self.lease_ms)
        pipe.execute()

    @guarded
    def advance(self, job_id: str, token: int, stage: str) -> JobRecord:
        """Record that run ``token`` started ``stage``; ``LeaseLost`` if it may not."""
        try:
            return self._transact(job_id, lambda job: transitions.advanced(job, token, stage))[0]
        except KeyError:
            raise LeaseLost(job_id) from None

    @guarded
    def finish(self, job_id: str, token: int, **changes: Any) -> JobRecord | None:
        """Run ``token``'s final change with its outbox entry; ``None`` if it may not."""
        try:
            job, changed = self._transact(
                job_id,
                lambda job: transitions.finished(job, token, changes),
                lambda pipe, _new: pipe.delete(self.lease_key(job_id)),
            )
        except KeyError:
            return None
        return job if changed else None

    @guarded
    def requeue(
        self,
        job_id: str,
        token: int,
        *,
        delay_seconds: float = 0.0,
        uncount: bool = False,
        error: dict[str, str] | None = None,
    ) -> JobRecord | None:
        """Run ``token``'s job queued again, its ``sending`` mark (the delay plus the
        grace) committed with it, so a failed send is made good by the reconciler."""

        def marks(pipe: Any, _new: JobRecord) -> None:
            pipe.delete(self.lease_key(job_id))
            ms = int(delay_seconds * 1000) + self.grace_ms
            pipe.set(self.sending_key(job_id), "1", px=ms)

        try:
            job, changed = self._transact(
                job_id,
                lambda job: transitions.requeued(job, token, uncount=uncount, error=error),
                marks,
            )
        except KeyError:
            return None
        return job if changed else None

    # -- the reconciler's --------------------------------------------------------------

    @guarded
    def mark_sending(self, job_id: str, delay_seconds: float = 0.0) -> None:
        """Note that a message of ``job_id`` is being sent (the reconciler waits)."""
        ms = int(delay_seconds * 1000) + self.grace_ms
        self.client.set(self.sending_key(job_id), "1", px=ms)

    @guarded
    def unfinished(self) -> list[JobRecord]:
        """Every queued or running job (what the reconciler checks)."""
        ids: list[str] = []
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            ids += [i.decode() for i in self.client.zrange(self._status(status), 0, -1)]
        return [job for job in self.jobs_by_ids(ids) if not job.terminal]

    @guarded
    def settled(self, job_ids: Sequence[str]) -> set[str]:
        """The ids among ``job_ids`` that have a live lease or a message on its way."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.exists(self.lease_key(job_id), self.sending_key(job_id))
        return {j for j, n in zip(job_ids, pipe.execute(), strict=True) if n}

    @guarded
    def fail_unfinished(self, job_id: str, error: dict[str, str]) -> JobRecord | None:
        """Fail a queued or running job no run holds (its queue message died), with its
        outbox entry; ``None`` if it moved meanwhile."""
        lease = self.lease_key(job_id)
        alive: list[bool] = []

        def read_lease(pipe: Any) -> None:
            alive[:] = [bool(pipe.exists(lease))]

        try:
            job, changed = self._transact(
                job_id,
                lambda job: transitions.failed_unfinished(job, lease_alive=alive[0], error=error),
                lambda pipe, _new: pipe.delete(self.sending_key(job_id)),
                watch=[lease],
                before=read_lease,
            )
        except KeyError:
            return None
        return job if changed else None
