"""``JobStore``: the storage primitives every job policy (submission, the runner, the
routes) is written over. SQLite (``sqlite.py``, embedded) and Redis (``redis.py``,
scale-out) implement it; how jobs reach a runner is the queue's business
(:mod:`mlsharp.service.queue`).

Every write is atomic, checks what it must in the same transaction (the queue limit,
the idempotency key, the lease token) and writes the outbox entry of a job's end with it
(:func:`~mlsharp.service.jobs.model.outcome_event`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mlsharp.service.jobs.model import BatchRecord, JobRecord, JobStatus


class JobStore(Protocol):
    """Job and batch records, shared by every process of a deployment."""

    def add(self, job: JobRecord, *, max_queued: int | None = None) -> JobRecord:
        """Persist one new job (see :meth:`add_many`)."""
        ...

    def add_many(
        self, jobs: Sequence[JobRecord], *, max_queued: int | None = None
    ) -> list[JobRecord]:
        """Persist new jobs, all or none. ``QueueFull`` unless the queued ones fit beside
        the jobs already queued (``max_queued``); ``DuplicateJob`` if an idempotency key
        is taken."""
        ...

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or ``None`` (also for a record too damaged to read, which is logged)."""
        ...

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Apply ``changes`` (not fenced: for requests such as a cancellation);
        ``KeyError`` if the job is gone."""
        ...

    def delete(self, job_id: str) -> None:
        """Forget a job (its files are the storage's business)."""
        ...

    def find_idempotent(self, owner: str | None, key: str) -> JobRecord | None:
        """The job an earlier request with this ``Idempotency-Key`` created, if any."""
        ...

    def page(
        self,
        *,
        limit: int,
        offset: int = 0,
        status: JobStatus | None = None,
        owner: str | None = None,
    ) -> tuple[list[JobRecord], int]:
        """A page of jobs, newest first, and how many match the filters."""
        ...

    def jobs_by_ids(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """The jobs with these ids, in the given order (missing ones left out)."""
        ...

    def cancel_queued(self, job_id: str) -> JobRecord | None:
        """Cancel the job if it is still queued; ``None`` if it was not."""
        ...

    def counts(self) -> dict[str, int]:
        """Jobs per status, every status present."""
        ...

    def expired(self, finished_before: float) -> list[str]:
        """Ids of finished jobs that ended before ``finished_before``."""
        ...

    def add_batch(self, batch: BatchRecord) -> BatchRecord:
        """Persist a batch record."""
        ...

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch, or ``None``."""
        ...

    def advance(self, job_id: str, token: int, stage: str) -> JobRecord:
        """Record that run ``token`` started ``stage``; ``LeaseLost`` if the job no longer
        runs (ended, deleted, or a newer run holds it)."""
        ...

    def finish(self, job_id: str, token: int, **changes: Any) -> JobRecord | None:
        """Run ``token``'s final change (``changes`` holds the status), with its outbox
        entry; ``None`` if this run may not make it."""
        ...

    def requeue(
        self,
        job_id: str,
        token: int,
        *,
        delay_seconds: float = 0.0,
        uncount: bool = False,
        error: dict[str, str] | None = None,
    ) -> JobRecord | None:
        """Put run ``token``'s job back to ``queued``, to run again after
        ``delay_seconds``; ``None`` if this run is not the newest."""
        ...

    def renew_leases(self, tokens: Mapping[str, int]) -> None:
        """Keep the leases of the runs in hand alive (``{job id: token}``); nothing to do
        where a run's liveness is not stored (one process owns the embedded queue)."""
        ...

    def close(self) -> None:
        """Release what the store holds open."""
        ...
