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
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any

from mlsharp.errors import BadRequest, QueueFull
from mlsharp.imaging import load_image
from mlsharp.panorama import cache_model_id, panorama_kind
from mlsharp.service.cache import cache_key
from mlsharp.service.jobs import JobRecord, JobStatus, new_id
from mlsharp.service.preview import cache_formats
from mlsharp.service.state import ServiceState
from mlsharp.service.worker import link_cached_outputs, publish_outcome, result_stats

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
    """A safe display name for an uploaded file (no folders, no control characters)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()[:120]
    return base or "image"


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


def submit(state: ServiceState, sub: Submission) -> tuple[JobRecord, bool]:
    """Create (or find) the job for ``sub``; returns ``(job, replayed)``.

    ``replayed`` is true when an earlier request with the same ``Idempotency-Key`` and
    the same body created the job. Blocking (decodes the image): call from a thread.
    Raises ``InvalidImage``/``ImageTooLarge``/``BadRequest``/``QueueFull``.
    """
    fingerprint = request_hash(sub)
    if sub.idempotency_key:
        earlier = _replay(state, sub, fingerprint)
        if earlier is not None:
            return earlier, True
    settings = state.settings
    image = load_image(
        sub.data,
        focal_mm=sub.focal_mm,
        max_pixels=settings.max_pixels,
        max_bytes=settings.max_upload_bytes,
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
                return _finish_from_cache(state, job, hit), False
    _check_queue(state)
    state.storage.save_input(job.id, sub.data, job.input_suffix)
    try:
        state.store.add(job)
    except sqlite3.IntegrityError:  # a concurrent request with the same key won the race
        state.storage.delete_job(job.id)
        earlier = _replay(state, sub, fingerprint)
        if earlier is None:
            raise
        return earlier, True
    state.notifier.notify()
    if state.wake_workers is not None:
        state.wake_workers()
    return job, False


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
    announced = getattr(state.cache, "model_ids", None)
    candidates = [own] if own is not None else (announced() if announced else [])
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


def _check_queue(state: ServiceState) -> None:
    queued = state.store.counts()["queued"]
    if queued >= state.settings.max_queue:
        raise QueueFull(f"the queue is full ({queued} jobs waiting); retry later", retry_after=10.0)


def _finish_from_cache(state: ServiceState, job: JobRecord, files: dict) -> JobRecord:
    """Record a job that is finished at birth, its files linked from the cache."""
    outputs = link_cached_outputs(state, job, files)
    stats = result_stats(state, job, outputs)
    now = time.time()
    done = replace(
        job,
        status=JobStatus.SUCCEEDED,
        stage="done",
        progress=1.0,
        started_at=now,
        finished_at=now,
        outputs=outputs,
        stats=stats,
        cached=True,
    )
    try:
        state.store.add(done)
    except sqlite3.IntegrityError:  # a concurrent request with the same key won the race
        state.storage.delete_job(job.id)
        assert job.idempotency_key is not None  # ids are random: only the key can clash
        earlier = state.store.find_idempotent(job.owner, job.idempotency_key)
        if earlier is None:
            raise
        return earlier
    state.metrics.jobs_finished.labels("succeeded").inc()
    state.notifier.notify()
    publish_outcome(state, done)
    return done
