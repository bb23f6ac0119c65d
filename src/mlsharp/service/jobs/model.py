"""What a job is: its record, its statuses and stages, and the rules on them every store
shares (how a record is encoded and checked, which change publishes which event).

A job is one photo to turn into 3D files. Its record is persisted *before* any work starts
and after every change; every update bumps its ``version`` so event streams can tell what
changed.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from mlsharp.errors import QueueFull


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


class CorruptRecord(ValueError):
    """A stored job record does not decode to a valid :class:`JobRecord`."""


_NUMBERS = ("progress", "created_at", "updated_at", "attempts", "version")
_OPTIONAL_NUMBERS = ("started_at", "finished_at", "focal_mm")
_STRINGS = ("id", "stage", "input_name", "input_sha256", "input_suffix")
_OPTIONAL_STRINGS = ("batch_id", "owner", "idempotency_key", "request_hash", "cache_key")


def checked_record(values: dict[str, Any]) -> JobRecord:
    """A :class:`JobRecord` from decoded stored values, every field's type checked.

    Raises :class:`CorruptRecord` naming the first bad field, so one damaged record
    never turns into a 500 further down (a view formatting a date from a string).
    """

    def bad(name: str) -> CorruptRecord:
        return CorruptRecord(f"field {name!r} has an invalid value {values.get(name)!r:.80}")

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    try:
        # Fields added since a record was written take their defaults.
        values = {**_defaults(), **values, "status": JobStatus(values["status"])}
        for name in _NUMBERS:
            if not number(values[name]):
                raise bad(name)
        for name in _OPTIONAL_NUMBERS:
            if values[name] is not None and not number(values[name]):
                raise bad(name)
        for name in (*_STRINGS, *(n for n in _OPTIONAL_STRINGS if values[n] is not None)):
            if not isinstance(values[name], str):
                raise bad(name)
        values["formats"] = tuple(values["formats"])
        if not all(isinstance(f, str) for f in values["formats"]):
            raise bad("formats")
        for name, kind in (("outputs", str), ("timings", (int, float))):
            table = values[name]
            if not isinstance(table, dict) or not all(
                isinstance(k, str) and isinstance(v, kind) for k, v in table.items()
            ):
                raise bad(name)
        if values["error"] is not None and not isinstance(values["error"], dict):
            raise bad("error")
        for name in ("density", "stats"):
            if not isinstance(values[name], dict):
                raise bad(name)
        for name in ("cached", "cancel_requested", "panorama"):
            if not isinstance(values[name], bool):
                raise bad(name)
        return JobRecord(**values)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CorruptRecord):
            raise
        raise CorruptRecord(f"{type(error).__name__}: {error}") from None


def _defaults() -> dict[str, Any]:
    """The default of every field that has one."""
    found: dict[str, Any] = {}
    for spec in fields(JobRecord):
        if spec.default is not MISSING:
            found[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            found[spec.name] = spec.default_factory()
    return found


class DuplicateJob(Exception):
    """The job's ``Idempotency-Key`` is already taken by another job of the same owner."""


#: Seconds a client refused by a full queue is told to wait (``Retry-After``).
QUEUE_FULL_RETRY_SECONDS = 10.0


def check_room(queued: int, adding: int, max_queued: int | None) -> None:
    """Raise :class:`QueueFull` unless ``adding`` more queued jobs fit beside ``queued``.

    Stores call it inside the transaction that inserts the jobs, so the check and the
    insert are one atomic step (concurrent submissions cannot race past the limit).
    """
    if max_queued is not None and adding and queued + adding > max_queued:
        raise QueueFull(
            f"the queue is full ({queued} jobs waiting); retry later",
            retry_after=QUEUE_FULL_RETRY_SECONDS,
        )


@dataclass(frozen=True)
class BatchRecord:
    """A group of jobs submitted together."""

    id: str
    job_ids: tuple[str, ...]
    created_at: float = field(default_factory=time.time)
    owner: str | None = None


class LeaseLost(Exception):
    """This run no longer owns the job (a newer attempt took over, or it was deleted)."""


@dataclass(frozen=True)
class Lease:
    """A run's hold on a job: the record as the run started it. Its ``token`` (the
    job's ``attempts`` then) fences every write of the run: a run that another took over
    can no longer change the job (see :mod:`~mlsharp.service.jobs.transitions`)."""

    job: JobRecord

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def token(self) -> int:
        return self.job.attempts


#: The webhook event of each final status that has one.
OUTCOME_EVENTS: dict[JobStatus, str] = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
}


def outcome_event(old: JobRecord | None, new: JobRecord) -> str | None:
    """The event a change from ``old`` (``None``: a new job) to ``new`` publishes: the
    job's end, exactly once (a record that already ended publishes nothing more).

    Stores write it to the outbox in the transaction that makes the change, so a job's
    final state and its webhook deliveries are committed together.
    """
    if old is not None and old.terminal:
        return None
    return OUTCOME_EVENTS.get(new.status)


def encode(job: JobRecord) -> str:
    """The record as compact JSON (the Redis store's records, the outbox's snapshots)."""
    data = asdict(job)
    data["status"] = job.status.value
    data["formats"] = list(job.formats)
    return json.dumps(data, separators=(",", ":"))


def decode(raw: bytes | str) -> JobRecord:
    """A record from :func:`encode`'s JSON; :class:`CorruptRecord` if it is not one."""
    try:
        values = json.loads(raw)
    except (TypeError, ValueError) as error:
        raise CorruptRecord(f"{type(error).__name__}: {error}") from None
    if not isinstance(values, dict):
        raise CorruptRecord("not a JSON object")
    return checked_record(values)
