"""Accepting a photo: the one submission path behind ``/v1/jobs``, ``/v1/predict`` and batches.

    bytes --validate & decode--> cache hit?  --yes--> a finished job at once
                                             --no---> input stored, job queued, workers woken

The photo is decoded here, in the request, so a bad upload gets its 4xx answer at once
instead of a job that fails later; the decoded pixels also give the cache key.
The input file is stored before the job record exists, so a worker never sees a job
without its input, and a crash between the two leaves only an orphan file.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mlsharp.errors import BadRequest
from mlsharp.imaging import load_image
from mlsharp.names import safe_name
from mlsharp.panorama import cache_model_id, panorama_kind
from mlsharp.service.cache import cache_key
from mlsharp.service.jobs import DuplicateJob, JobRecord, JobStatus, new_id
from mlsharp.service.jobs.runner import link_cached_outputs, result_stats
from mlsharp.service.preview import cache_formats
from mlsharp.service.state import ServiceState

_SUFFIX_BY_FORMAT = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "BMP": ".bmp",
    "GIF": ".gif",
    "HEIF": ".heic",
    "MPO": ".jpg",
}
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class Submission:
    """One photo to process and how."""

    data: bytes
    filename: str
    focal_mm: float | None = None
    formats: tuple[str, ...] = ("ply",)
    #: splats to keep, ``{"max_splats": N, "min_opacity": A}`` (see :func:`parse_density`)
    density: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    idempotency_key: str | None = None
    batch_id: str | None = None
    #: a 360° panorama: True (asked for), False (never), None (when its XMP says so)
    panorama: bool | None = None


def parse_formats(raw: str | None, default: list[str]) -> tuple[str, ...]:
    """``"ply,spz"`` -> ``("ply", "spz")``, checked against the format table."""
    from mlsharp import formats
    from mlsharp.errors import ConfigError

    try:
        return formats.parse_formats(raw, default)
    except ConfigError as error:
        raise BadRequest(str(error), status=422, code="invalid_format") from None


def parse_density(max_splats: int | None, min_opacity: float | None) -> dict[str, Any]:
    """The ``max_splats`` / ``min_opacity`` form fields as a job's ``density`` (checked)."""
    from mlsharp.errors import ConfigError
    from mlsharp.splat.density import Density

    try:
        return Density.checked(max_splats, min_opacity).as_dict()
    except ConfigError as error:
        raise BadRequest(str(error), status=422, code="validation_error") from None


def clean_filename(name: str | None) -> str:
    """A safe display name for an uploaded file: :func:`mlsharp.names.safe_name` (no
    folders, no control characters, at most ``MAX_NAME_BYTES`` bytes)."""
    return safe_name(name)


def request_hash(sub: Submission) -> str:
    """Digest of everything that defines the job, to compare idempotent retries."""
    digest = hashlib.sha256(sub.data)
    fields: list[Any] = [sub.focal_mm, list(sub.formats)]
    if sub.density:  # absent when not asked for: hashes of earlier requests stay valid
        fields.append(sub.density)
    if sub.panorama is not None:  # likewise
        fields.append({"panorama": sub.panorama})
    digest.update(json.dumps(fields).encode())
    return digest.hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    """Validate an ``Idempotency-Key`` header value (printable ASCII, at most 255)."""
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise BadRequest(
            "Idempotency-Key must be 1-255 printable ASCII characters without spaces",
            code="invalid_idempotency_key",
        )
    return key


@dataclass(frozen=True)
class Prepared:
    """A validated photo, ready to become a job: the job to store and its input bytes."""

    job: JobRecord
    data: bytes
    #: ``True`` when an earlier request with the same ``Idempotency-Key`` made ``job``.
    replayed: bool = False

    @property
    def queued(self) -> bool:
        """Whether storing it adds a job to the queue (not a replay, not a cache hit)."""
        return not self.replayed and self.job.status is JobStatus.QUEUED


def submit(state: ServiceState, sub: Submission) -> tuple[JobRecord, bool]:
    """Create (or find) the job for ``sub``; returns ``(job, replayed)``.

    ``replayed`` is true when an earlier request with the same ``Idempotency-Key`` and
    the same body created the job. Blocking (decodes the image): call from a thread.
    Raises ``InvalidImage``/``ImageTooLarge``/``BadRequest``/``QueueFull``.
    """
    prepared = prepare(state, sub)
    if prepared.replayed:
        return prepared.job, True
    try:
        [job] = commit(state, [prepared])
    except DuplicateJob:  # a concurrent request with the same key won the race
        earlier = _replay(state, sub, request_hash(sub))
        if earlier is None:
            raise
        return earlier, True
    return job, False


def prepare(state: ServiceState, sub: Submission) -> Prepared:
    """Validate and decode ``sub``; the job it becomes (finished at once on a cache hit).

    Nothing is stored yet, except the result files a cache hit links into the job's
    folder. Raises ``InvalidImage``/``ImageTooLarge``/``BadRequest``.
    """
    fingerprint = request_hash(sub)
    if sub.idempotency_key:
        earlier = _replay(state, sub, fingerprint)
        if earlier is not None:
            return Prepared(earlier, sub.data, replayed=True)
    settings = state.settings
    image = load_image(
        sub.data,
        focal_mm=sub.focal_mm,
        max_pixels=settings.max_pixels,
        max_bytes=settings.max_upload_bytes,
        decode_budget=state.decode_budget,
        name=sub.filename,
    )
    panorama = panorama_kind(image, sub.panorama) is not None  # NotAPanorama: a 422
    job = JobRecord(
        id=new_id("job"),
        input_name=sub.filename,
        input_sha256=hashlib.sha256(sub.data).hexdigest(),
        input_suffix=_SUFFIX_BY_FORMAT.get(image.format.upper(), ".img"),
        focal_mm=sub.focal_mm,
        formats=sub.formats,
        density=dict(sub.density),
        owner=sub.owner,
        idempotency_key=sub.idempotency_key,
        request_hash=fingerprint,
        batch_id=sub.batch_id,
        panorama=panorama,
    )
    if state.cache.enabled:
        found = _cache_lookup(state, image, sub.formats, sub.density, panorama)
        if found is not None:
            key, hit = found
            job = replace(job, cache_key=key)
            if hit:
                job = _finished_from_cache(state, job, hit)
    return Prepared(job, sub.data)


def commit(state: ServiceState, prepared: Sequence[Prepared]) -> list[JobRecord]:
    """Store the prepared jobs at once: all of them, or none.

    Inputs of queued jobs are saved first (a worker never sees a job without its input);
    the queue limit is checked in the transaction that inserts them, so concurrent
    submissions cannot exceed it. Raises ``QueueFull`` or ``DuplicateJob`` (nothing is
    stored then).
    """
    fresh = [p for p in prepared if not p.replayed]
    try:
        for item in fresh:
            if item.queued:
                state.storage.save_input(item.job.id, item.data, item.job.input_suffix)
        state.store.add_many([p.job for p in fresh], max_queued=state.settings.max_queue)
    except BaseException:
        for item in fresh:
            state.storage.delete_job(item.job.id)
        raise
    for item in fresh:
        if item.queued:
            state.queue.send(item.job)
        else:  # finished at birth (a cache hit): its event went to the outbox with it
            state.metrics.jobs_finished.labels("succeeded").inc()
            state.webhooks.wake()
    state.notifier.notify()
    return [p.job for p in prepared]


def _cache_lookup(
    state: ServiceState,
    image: Any,
    formats: tuple[str, ...],
    density: dict[str, Any],
    panorama: bool = False,
) -> tuple[str | None, dict | None] | None:
    """``(key, hit files or None)``, or ``None`` when no model id is known to look with.

    With its own model loaded the instance uses that model's id, and the key is kept on
    the job (the worker reuses it). An API-only instance of the scale-out mode uses the
    ids its workers announce in Redis: a hit under any of them is a result of a model
    the cluster runs; on a miss the key stays unset, so the worker computes its own (a
    worker with other weights must not file its result under another model's key).
    """
    own = state.model.model_id
    candidates = [own] if own is not None else state.cache.model_ids()
    if not candidates:
        return None
    wanted = cache_formats(state.settings, formats)
    key = None
    hit = None
    for model_id in candidates:
        key = cache_key(
            image.pixels,
            focal_px=image.focal_px,
            model_id=cache_model_id(model_id, panorama),
            options=density,
        )
        hit = state.cache.get(key, wanted)
        if hit:
            break
    state.metrics.cache_lookups.labels("hit" if hit else "miss").inc()
    return (key if hit or own is not None else None), hit


def _replay(state: ServiceState, sub: Submission, fingerprint: str) -> JobRecord | None:
    assert sub.idempotency_key is not None
    earlier = state.store.find_idempotent(sub.owner, sub.idempotency_key)
    if earlier is not None and earlier.request_hash != fingerprint:
        raise BadRequest(
            "this Idempotency-Key was already used with a different request",
            status=422,
            code="idempotency_key_reused",
        )
    return earlier


def _finished_from_cache(state: ServiceState, job: JobRecord, files: dict) -> JobRecord:
    """The job finished at birth, its files linked from the cache (stored by ``commit``)."""
    outputs = link_cached_outputs(state, job, files)
    now = time.time()
    return replace(
        job,
        status=JobStatus.SUCCEEDED,
        stage="done",
        progress=1.0,
        started_at=now,
        finished_at=now,
        outputs=outputs,
        stats=result_stats(state, job, outputs),
        cached=True,
    )
