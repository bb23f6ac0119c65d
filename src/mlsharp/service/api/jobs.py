"""``/v1/jobs``: submit a photo, follow it, download its result, cancel or delete it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from mlsharp.errors import BadRequest, Conflict, NotFound, RequestError, ServiceUnavailable
from mlsharp.imaging import MAX_FOCAL_MM, MIN_FOCAL_MM
from mlsharp.names import content_disposition
from mlsharp.service.deps import Owner, State, base_url
from mlsharp.service.files.ports import LocalFile, Redirect, Stream
from mlsharp.service.http_errors import error_response
from mlsharp.service.jobs import JobRecord, JobStatus
from mlsharp.service.schemas import ErrorBody, JobCreated, JobPage, JobPublic
from mlsharp.service.state import ServiceState
from mlsharp.service.submit import (
    Submission,
    check_idempotency_key,
    clean_filename,
    parse_density,
    parse_formats,
    submit,
)
from mlsharp.service.views import job_event_data, job_view
from mlsharp.splat.density import MAX_SPLATS_LIMIT

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_SECONDS = 15.0
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


def find_job(state: ServiceState, job_id: str, owner: str | None) -> JobRecord:
    """The job, if it exists and belongs to the caller; else :class:`NotFound`."""
    job = state.store.get(job_id)
    if job is None or (owner is not None and job.owner != owner):
        raise NotFound(f"no job {job_id!r} (it may have expired)")
    return job


#: Form fields shared by every endpoint that accepts photos.
FocalMmForm = Annotated[
    float | None,
    Form(
        ge=MIN_FOCAL_MM,
        le=MAX_FOCAL_MM,
        description=f"35 mm-equivalent focal length, {MIN_FOCAL_MM:g} to {MAX_FOCAL_MM:g} mm",
    ),
]
FormatsForm = Annotated[
    str | None, Form(max_length=200, description="comma-separated output formats")
]
MaxSplatsForm = Annotated[
    int | None,
    Form(
        ge=1,
        le=MAX_SPLATS_LIMIT,
        description="keep at most this many splats, the most important (opacity x area seen "
        "from the photo's camera); SHARP predicts 1,179,648",
    ),
]
MinOpacityForm = Annotated[
    float | None, Form(ge=0, lt=1, description="drop splats less opaque than this")
]
PanoramaForm = Annotated[
    bool | None,
    Form(
        description="a 360° panorama (2:1 equirectangular, or a 4:3 cube-map cross): true "
        "predicts one scene around the camera, false a photo; absent: when the file's GPano "
        "XMP says equirectangular"
    ),
]


async def submit_upload(
    state: ServiceState,
    upload: UploadFile,
    *,
    focal_mm: float | None,
    formats: str | None,
    owner: str | None,
    idempotency_key: str | None = None,
    max_splats: int | None = None,
    min_opacity: float | None = None,
    panorama: bool | None = None,
) -> tuple[JobRecord, bool]:
    """Read one uploaded photo and submit it (see :func:`submit`); ``(job, replayed)``."""
    wanted = parse_formats(formats, state.settings.default_formats)
    density = parse_density(max_splats, min_opacity)
    data, name = await read_upload(upload)
    sub = Submission(
        data=data,
        filename=name,
        focal_mm=focal_mm,
        formats=wanted,
        density=density,
        owner=owner,
        idempotency_key=check_idempotency_key(idempotency_key),
        panorama=panorama,
    )
    return await run_in_threadpool(submit, state, sub)


async def read_upload(upload: UploadFile) -> tuple[bytes, str]:
    """The bytes and a safe display name of an uploaded file."""
    data = await upload.read()
    if not data:
        raise BadRequest("the uploaded file is empty", status=422, code="empty_file")
    return data, clean_filename(upload.filename)


@router.post("", status_code=202, response_model=JobCreated, responses=_ERRORS)
async def create_job(
    request: Request,
    response: Response,
    state: State,
    owner: Owner,
    file: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, TIFF, HEIC...)")],
    focal_mm: FocalMmForm = None,
    formats: FormatsForm = None,
    max_splats: MaxSplatsForm = None,
    min_opacity: MinOpacityForm = None,
    panorama: PanoramaForm = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobCreated:
    """Queue a photo for 3D prediction; answers at once with the job's id and status URL.

    A cache hit returns a job that has already succeeded. The same ``Idempotency-Key``
    with the same body returns the same job instead of a new one.
    """
    job, replayed = await submit_upload(
        state,
        file,
        focal_mm=focal_mm,
        formats=formats,
        owner=owner,
        idempotency_key=idempotency_key,
        max_splats=max_splats,
        min_opacity=min_opacity,
        panorama=panorama,
    )
    status_url = f"{base_url(state)}/v1/jobs/{job.id}"
    response.headers["Location"] = status_url
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobCreated(id=job.id, status=job.status.value, status_url=status_url, cached=job.cached)


@router.get("", response_model=JobPage, responses=_ERRORS)
def list_jobs(
    state: State,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    status: Annotated[JobStatus | None, Query()] = None,
) -> JobPage:
    """Jobs, newest first, a page at a time."""
    jobs, total = state.store.page(limit=limit, offset=offset, status=status, owner=owner)
    base = base_url(state)
    following = None
    if offset + len(jobs) < total:
        following = f"{base}/v1/jobs?limit={limit}&offset={offset + limit}"
        if status is not None:
            following += f"&status={status.value}"
    return JobPage(
        items=[job_view(j, base) for j in jobs],
        total=total,
        limit=limit,
        offset=offset,
        next=following,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=_ERRORS)
def get_job(job_id: str, state: State, owner: Owner) -> JobPublic:
    """A job's status, stage, progress, timings, error and result links."""
    return job_view(find_job(state, job_id, owner), base_url(state))


@router.get(
    "/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, **_ERRORS},
    response_class=StreamingResponse,
)
async def job_events(job_id: str, request: Request, state: State, owner: Owner):
    """Server-Sent Events: the job (as in ``GET /v1/jobs/{id}``) each time it changes.

    Every event's ``data`` is the job as JSON; the stream ends after an ``event: end``
    carrying the final state. Comments (``: keep-alive``) keep idle connections open.
    """
    await run_in_threadpool(find_job, state, job_id, owner)
    stream = _event_stream(job_id, request, state)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _event_stream(job_id: str, request: Request, state: ServiceState) -> AsyncIterator[str]:
    """The event stream of one job; store reads run in a thread (Redis is blocking I/O).

    If the job store becomes unreachable mid-stream, the stream ends cleanly with an
    ``error`` event in the error schema (clients reconnect later) instead of aborting.
    """
    base = base_url(state)
    last_version = -1
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        try:
            job = await run_in_threadpool(state.store.get, job_id)
        except ServiceUnavailable as error:  # the error schema, as a 503 would carry it
            body = error_response(request.url.path, 503, error.code, str(error)).body
            yield f"event: error\ndata: {bytes(body).decode()}\n\n"
            return
        if job is None:
            yield 'event: end\ndata: {"deleted": true}\n\n'
            return
        if job.version != last_version:
            last_version = job.version
            last_sent = time.monotonic()
            data = json.dumps(job_event_data(job, base), separators=(",", ":"))
            yield f"id: {job.version}\ndata: {data}\n\n"
            if job.terminal:
                yield f"event: end\ndata: {data}\n\n"
                return
        if await request.is_disconnected():
            return
        await state.notifier.wait(timeout=1.0)
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"


@router.delete(
    "/{job_id}",
    status_code=204,
    responses={202: {"model": JobPublic}, **_ERRORS},
)
def delete_job(job_id: str, state: State, owner: Owner) -> Response:
    """Cancel a queued or running job (202 with the job), or delete a finished one (204)."""
    job = find_job(state, job_id, owner)
    if job.status is JobStatus.QUEUED:
        canceled = state.store.cancel_queued(job_id)
        if canceled is not None:
            state.metrics.jobs_finished.labels("canceled").inc()
            state.notifier.notify()
            return _json(job_view(canceled, base_url(state)), 202)
        job = find_job(state, job_id, owner)  # a worker claimed it meanwhile
    if job.status is JobStatus.RUNNING:
        job = state.store.update(job_id, cancel_requested=True)
        state.notifier.notify()
        return _json(job_view(job, base_url(state)), 202)
    state.storage.delete_job(job_id)  # files first: a failure leaves the record to retry
    state.store.delete(job_id)
    state.notifier.notify()
    return Response(status_code=204)


def _json(model: JobPublic, status: int) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **_ERRORS},
)
def job_result(
    job_id: str,
    request: Request,
    state: State,
    owner: Owner,
    fmt: Annotated[
        str, Query(alias="format", max_length=32, description="output format, e.g. ply")
    ] = "ply",
) -> Response:
    """Download one result file (supports ``Range``, ``ETag`` and ``If-None-Match``)."""
    from mlsharp.service.preview import media_type

    job = find_job(state, job_id, owner)
    if job.status is not JobStatus.SUCCEEDED:
        raise Conflict(f"job {job_id} is {job.status.value}; its result is not available")
    fmt = fmt.strip().lower()  # as submission does (parse_formats): ?format=SPZ works
    name = job.outputs.get(fmt)
    if name is None:
        available = ", ".join(job.outputs) or "none"
        raise NotFound(f"job {job_id} has no {fmt!r} result (available: {available})")
    found = state.storage.download(job_id, name, media_type=media_type(fmt))
    if found is None:
        raise NotFound(f"the {fmt} result of job {job_id} is no longer stored")
    if not isinstance(found, LocalFile):  # object storage: redirected or streamed
        return remote_response(found, name, media_type(fmt))
    path = found.path
    stat = path.stat()
    etag = f'"{job.id}-{fmt}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    check_range(request.headers.get("range"), stat.st_size)
    return FileResponse(
        path,
        media_type=media_type(fmt),  # the scene formats' types, or the preview's PNG
        headers={
            "ETag": etag,
            "Cache-Control": "private, max-age=3600",
            "Content-Disposition": content_disposition(name),
        },
    )


def remote_response(found: Redirect | Stream, name: str, media_type: str) -> Response:
    """The answer for a result in object storage: a 307 to its presigned URL, or its
    bytes streamed through."""
    if isinstance(found, Redirect):
        return RedirectResponse(found.url, status_code=307, headers={"Cache-Control": "no-store"})
    return StreamingResponse(
        found.chunks,
        media_type=media_type,
        headers={
            "Content-Length": str(found.length),
            "ETag": found.etag,
            "Content-Disposition": content_disposition(name),
            "Cache-Control": "private, max-age=3600",
        },
    )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches the current ``etag`` (RFC 9110 13.1.2).

    ``*`` matches any current representation; otherwise the listed tags are compared
    weakly (``W/"x"`` matches ``"x"``), as this header requires.
    """
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque_tag(etag)
    return any(_opaque_tag(tag) == wanted for tag in if_none_match.split(","))


def _opaque_tag(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag[:2] in ("W/", "w/") else tag


class RangeNotSatisfiable(RequestError):
    """The ``Range`` asks for bytes beyond the end of the file."""

    http_status = 416
    code = "range_not_satisfiable"


#: One ``first-last`` part of a byte range: ASCII digits only (``str.isdigit`` also takes
#: "²" or Arabic-Indic digits, which ``int`` then refuses), at most 18 of them (an exabyte;
#: thousands of digits made ``int`` itself fail).
_RANGE_PART = re.compile(r"^([0-9]{0,18})-([0-9]{0,18})$")
#: Parts accepted in one ``Range`` header (each becomes a part of a multipart answer).
MAX_RANGE_PARTS = 16


def check_range(header: str | None, size: int) -> None:
    """Refuse malformed (400) or unsatisfiable (416) ``Range`` headers in the error schema.

    Valid ones are served by ``FileResponse`` itself.
    """
    if header is None:
        return
    malformed = BadRequest(f"malformed Range header {header[:100]!r}", code="invalid_range")
    unit, _, spec = header.partition("=")
    parts = [p.strip() for p in spec.split(",")] if spec else []
    if unit.strip().lower() != "bytes" or not parts or len(parts) > MAX_RANGE_PARTS:
        raise malformed
    satisfiable = False
    for part in parts:
        match = _RANGE_PART.match(part)
        if match is None or not (match[1] or match[2]):
            raise malformed
        first, last = match[1], match[2]
        if first and last and int(last) < int(first):
            raise malformed
        if (first and int(first) < size) or (not first and int(last) > 0):
            satisfiable = True
    if not satisfiable:
        raise RangeNotSatisfiable(f"the range is outside the file's {size} bytes")


async def wait_for_job(state: ServiceState, job_id: str, timeout: float) -> JobRecord | None:
    """Wait until the job is finished (or ``timeout``); the last record seen."""
    deadline = time.monotonic() + timeout
    while True:
        job = await run_in_threadpool(state.store.get, job_id)  # blocking I/O off the loop
        if job is None or job.terminal:
            return job
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return job
        await state.notifier.wait(timeout=min(1.0, remaining))
