"""The fenced transitions of a job, written once; every store applies them atomically.

Each function takes the record as stored now and returns the new record, or ``None``
for "leave it" (the store then writes nothing). A store reads the record, calls the
function and writes the result in one transaction (SQLite ``BEGIN IMMEDIATE``, Redis
``WATCH``/``MULTI``); it bumps ``version`` and ``updated_at`` itself.

**Attempts and fencing.** A run starts by incrementing ``attempts``; that number is the
run's *lease token* (:class:`~mlsharp.service.jobs.model.Lease`). Stage updates and
retries succeed only for the newest run. A final *success* of an older run that is still
alive is accepted while no newer run has produced a result (first result wins: a run
that outlived a Redis outage keeps its work); any other final change of an older run is
dropped.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from mlsharp.service.jobs.model import STAGES, JobRecord, JobStatus, LeaseLost, stage_progress

#: What a queue delivery of a job leads to (:func:`attempt_started`).
RUN, SKIP, EXHAUSTED = "run", "skip", "exhausted"
#: ... the job runs on a worker whose lease is alive (a duplicate delivery): ack it.
BUSY = "busy"
#: ... the job is ``running`` but no run holds its lease: take over after a pause.
ORPHAN = "orphan"


def started(job: JobRecord, now: float) -> JobRecord:
    """``job`` taken by a new run: ``running``, its ``attempts`` (the new token) counted."""
    return replace(
        job,
        status=JobStatus.RUNNING,
        stage="decode",
        progress=STAGES["decode"],
        started_at=now,
        attempts=job.attempts + 1,
    )


def attempt_started(
    job: JobRecord, *, lease_alive: bool, take_over: bool, max_attempts: int, now: float
) -> tuple[str, JobRecord | None]:
    """What a queue delivery of ``job`` does: ``(outcome, new record or None)``.

    SKIP: it ended. BUSY: a live run holds it. ORPHAN: it is ``running`` but its lease is
    gone (``take_over`` then starts a new run). EXHAUSTED: it ran ``max_attempts`` times
    (it fails, the last error kept) or it was canceled meanwhile. RUN: a new run.
    """
    if job.terminal:
        return SKIP, None
    if job.status is JobStatus.RUNNING and (lease_alive or not take_over):
        return (BUSY if lease_alive else ORPHAN), None
    if job.cancel_requested:
        canceled = replace(job, status=JobStatus.CANCELED, stage="canceled", finished_at=now)
        return EXHAUSTED, canceled
    if job.attempts >= max_attempts:
        last = (job.error or {}).get("message", "its worker stopped before finishing")
        error = {
            "code": "too_many_attempts",
            "message": f"the job ran {job.attempts} times without finishing; last: {last}",
        }
        failed = replace(job, status=JobStatus.FAILED, stage="failed", finished_at=now, error=error)
        return EXHAUSTED, failed
    return RUN, started(job, now)


def advanced(job: JobRecord, token: int, stage: str) -> JobRecord | None:
    """``stage`` started in run ``token``; :class:`LeaseLost` if the job no longer runs.

    An older run still alive after a newer one took over keeps going without writing its
    stages (the newer run reports progress): ``None``.
    """
    if job.status is not JobStatus.RUNNING or job.attempts < token:
        raise LeaseLost(job.id)
    if job.attempts != token:
        return None
    return replace(job, stage=stage, progress=stage_progress(stage))


def finished(job: JobRecord, token: int, changes: dict[str, Any]) -> JobRecord | None:
    """The final change of run ``token`` (``changes`` holds the status), if it may make it."""
    if job.status is not JobStatus.RUNNING or job.attempts < token:
        return None
    if job.attempts != token and changes.get("status") is not JobStatus.SUCCEEDED:
        return None
    return replace(job, **changes)


def requeued(
    job: JobRecord, token: int, *, uncount: bool, error: dict[str, str] | None
) -> JobRecord | None:
    """Run ``token``'s job back to ``queued`` (only the newest run may); ``uncount`` gives
    the attempt back (a run handed back on shutdown did not fail), ``error`` is kept."""
    if job.status is not JobStatus.RUNNING or job.attempts != token:
        return None
    changes: dict[str, Any] = {"status": JobStatus.QUEUED, "stage": "queued", "progress": 0.0}
    if uncount:
        changes["attempts"] = job.attempts - 1
    if error is not None:
        changes["error"] = error
    return replace(job, **changes)


def canceled_if_queued(job: JobRecord) -> JobRecord | None:
    """``job`` canceled, if it is still queued."""
    if job.status is not JobStatus.QUEUED:
        return None
    return replace(job, status=JobStatus.CANCELED, stage="canceled", finished_at=time.time())


def failed_unfinished(
    job: JobRecord, *, lease_alive: bool, error: dict[str, str]
) -> JobRecord | None:
    """A queued or running job no run holds, failed with ``error`` (its message died)."""
    if job.terminal or lease_alive:
        return None
    return replace(
        job, status=JobStatus.FAILED, stage="failed", finished_at=time.time(), error=error
    )
