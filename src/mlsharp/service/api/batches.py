"""``/v1/batches``: several photos (or one zip of photos) at once, and a zip of all results."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO, cast

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from mlsharp.config import Settings
from mlsharp.errors import BadRequest, Conflict, MlsharpError, NotFound
from mlsharp.imaging import is_supported_path
from mlsharp.names import content_disposition, safe_name
from mlsharp.service.api.jobs import (
    _ERRORS,
    FocalMmForm,
    FormatsForm,
    MaxSplatsForm,
    MinOpacityForm,
)
from mlsharp.service.deps import Owner, State, base_url
from mlsharp.service.jobs import BatchRecord, JobRecord, JobStatus, new_id
from mlsharp.service.schemas import BatchPublic
from mlsharp.service.state import ServiceState
from mlsharp.service.submit import (
    Prepared,
    Submission,
    clean_filename,
    commit,
    parse_density,
    parse_formats,
    prepare,
)
from mlsharp.service.views import iso, job_view

router = APIRouter(prefix="/v1/batches", tags=["batches"])
_ZIP_MAGIC = b"PK\x03\x04"


class Rejected(BaseModel):
    """An image of a batch that was not accepted, and why."""

    name: str
    error: str
    message: str


class BatchCreated(BatchPublic):
    """A new batch: its jobs, plus the images that were refused."""

    rejected: list[Rejected]


#: Entries a batch zip may list in all (folders and skipped files included): bounds the
#: memory of reading its directory before any member is looked at.
MAX_ZIP_ENTRIES = 10_000
_CENTRAL_DIRECTORY_ENTRY = b"PK\x01\x02"


def batch_byte_limit(settings: Settings) -> int:
    """The most bytes a batch's photos may add up to (zips counted unpacked)."""
    return settings.max_batch_bytes or 2 * settings.max_upload_bytes


def _too_large(limit: int) -> BadRequest:
    return BadRequest(
        f"the batch's photos add up to more than the limit of {limit:,} bytes "
        "(max_batch_bytes; a zip counts unpacked)",
        status=413,
        code="payload_too_large",
    )


def _too_many(count: int, settings: Settings) -> BadRequest:
    return BadRequest(
        f"the batch holds {count} images; at most {settings.max_batch_files} are accepted",
        status=413,
        code="too_many_files",
    )


def _is_photo_member(member: zipfile.ZipInfo) -> bool:
    """A member worth submitting: a file with an image extension, not hidden, not macOS's
    resource forks. Windows zips separate folders with backslashes."""
    path = PurePosixPath(member.filename.replace("\\", "/"))
    return (
        not member.is_dir()
        and not path.name.startswith(".")
        and "__MACOSX" not in path.parts
        and is_supported_path(path.name)
    )


def _expand_zip(data: bytes, settings: Settings) -> list[tuple[str, bytes]]:
    """The photos inside a zip (by extension), each with its :func:`safe_name`.

    Bounded before and while unpacking: at most ``MAX_ZIP_ENTRIES`` entries (counted
    before the directory is parsed), ``max_batch_files`` photos, and
    :func:`batch_byte_limit` bytes in all, by the declared sizes first and by the bytes
    actually inflated while reading (a zip bomb stops at the limit). Zips inside the zip
    are not opened: they are not photos.
    """
    if data.count(_CENTRAL_DIRECTORY_ENTRY) > MAX_ZIP_ENTRIES:
        raise BadRequest(
            f"the zip lists more than {MAX_ZIP_ENTRIES:,} entries",
            status=413,
            code="too_many_files",
        )
    limit = batch_byte_limit(settings)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if _is_photo_member(m)]
            if len(members) > settings.max_batch_files:
                raise _too_many(len(members), settings)
            if sum(m.file_size for m in members) > limit:
                raise _too_large(limit)
            photos, total = [], 0
            for member in members:
                chunks = []
                with archive.open(member) as source:
                    while chunk := source.read(1 << 20):
                        total += len(chunk)
                        if total > limit:
                            raise _too_large(limit)
                        chunks.append(chunk)
                photos.append((safe_name(member.filename), b"".join(chunks)))
            return photos
    # zlib.error: corrupt deflate data; RuntimeError: encrypted member;
    # NotImplementedError: unknown compression method.
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        zlib.error,
        RuntimeError,
        NotImplementedError,
    ):
        raise BadRequest("the zip file is corrupt", status=422, code="invalid_zip") from None


def batch_view(state: ServiceState, batch: BatchRecord) -> BatchPublic:
    """A batch with its jobs and overall status."""
    jobs = state.store.jobs_by_ids(batch.job_ids)
    counts = {s.value: 0 for s in JobStatus}
    for job in jobs:
        counts[job.status.value] += 1
    finished = all(job.terminal for job in jobs)
    started = any(job.status is not JobStatus.QUEUED for job in jobs)
    base = base_url(state)
    return BatchPublic(
        id=batch.id,
        status="completed" if finished else "running" if started else "queued",
        counts=counts,
        jobs=[job_view(j, base) for j in jobs],
        archive_url=f"{base}/v1/batches/{batch.id}/archive",
        created_at=iso(batch.created_at) or "",
    )


def _find_batch(state: ServiceState, batch_id: str, owner: str | None) -> BatchRecord:
    batch = state.store.get_batch(batch_id)
    if batch is None or (owner is not None and batch.owner != owner):
        raise NotFound(f"no batch {batch_id!r}")
    return batch


@router.post("", status_code=202, response_model=BatchCreated, responses=_ERRORS)
async def create_batch(
    state: State,
    owner: Owner,
    files: Annotated[list[UploadFile], File(description="photos, or a single .zip of photos")],
    focal_mm: FocalMmForm = None,
    formats: FormatsForm = None,
    max_splats: MaxSplatsForm = None,
    min_opacity: MinOpacityForm = None,
) -> BatchCreated:
    """One job per image. Images that fail validation are listed in ``rejected``."""
    settings = state.settings
    wanted = parse_formats(formats, settings.default_formats)
    density = parse_density(max_splats, min_opacity)
    if len(files) > settings.max_batch_files:
        raise _too_many(len(files), settings)
    items = [(await f.read(), clean_filename(f.filename)) for f in files]
    if len(items) == 1 and items[0][0].startswith(_ZIP_MAGIC):
        # Unpacking (and the store calls below) block: off the event loop, so one large
        # zip or a slow job store (Redis) does not stall every other request.
        expanded = await run_in_threadpool(_expand_zip, items[0][0], settings)
        items = [(data, name) for name, data in expanded]
    elif sum(len(data) for data, _ in items) > batch_byte_limit(settings):
        raise _too_large(batch_byte_limit(settings))
    if not items:
        raise BadRequest("the batch holds no images", status=422, code="empty_batch")
    batch_id = new_id("batch")
    prepared: list[Prepared] = []
    rejected: list[Rejected] = []
    first_error: MlsharpError | None = None
    for data, name in items:
        sub = Submission(
            data=data,
            filename=name,
            focal_mm=focal_mm,
            formats=wanted,
            density=density,
            owner=owner,
            batch_id=batch_id,
        )
        try:
            if not data:
                raise BadRequest("the file is empty", status=422, code="empty_file")
            prepared.append(await run_in_threadpool(prepare, state, sub))
        except MlsharpError as error:  # a bad image: report it, go on
            first_error = first_error or error
            rejected.append(Rejected(name=name, error=error.code, message=str(error)))
    if not prepared:
        # Nothing accepted: answer with the first image's own error (its status and
        # code), so an oversized photo is a 413.
        assert first_error is not None
        raise first_error
    # All photos or none: a full queue refuses the whole batch (503, Retry-After).
    jobs = await run_in_threadpool(commit, state, prepared)
    record = BatchRecord(id=batch_id, job_ids=tuple(j.id for j in jobs), owner=owner)
    batch = await run_in_threadpool(state.store.add_batch, record)
    view = await run_in_threadpool(batch_view, state, batch)
    return BatchCreated(**view.model_dump(), rejected=rejected)


@router.get("/{batch_id}", response_model=BatchPublic, responses=_ERRORS)
def get_batch(batch_id: str, state: State, owner: Owner) -> BatchPublic:
    """The batch's jobs and counts per status."""
    return batch_view(state, _find_batch(state, batch_id, owner))


@router.get(
    "/{batch_id}/archive",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, **_ERRORS},
)
def batch_archive(
    batch_id: str, state: State, owner: Owner, partial: bool = False
) -> StreamingResponse:
    """A zip of every succeeded job's result files, streamed as it is built.

    Until all jobs are finished this is ``409`` unless ``partial=true``.
    """
    batch = _find_batch(state, batch_id, owner)
    jobs = state.store.jobs_by_ids(batch.job_ids)
    if not partial and not all(j.terminal for j in jobs):
        raise Conflict("the batch is not finished yet; retry later or pass partial=true")
    # Open every file now: an open file stays readable on POSIX when a client deletes
    # its job during the download, so the archive is never cut half-way.
    members = _open_members(_archive_members(state, jobs))
    return StreamingResponse(
        _stream_zip(members),
        media_type="application/zip",
        headers={"Content-Disposition": content_disposition(f"{batch.id}.zip")},
    )


def _archive_members(state: ServiceState, jobs: list[JobRecord]) -> list[tuple[str, Path]]:
    members, used = [], set()
    for job in jobs:
        if job.status is not JobStatus.SUCCEEDED:
            continue
        # The formats the client asked for; the page's thumbnail (`preview`) stays out.
        for name in (job.outputs[fmt] for fmt in job.formats if fmt in job.outputs):
            try:
                path = state.storage.output_path(job.id, name)
            except ValueError:  # a name an older version stored unchecked: skip it
                continue
            arcname = safe_name(name, default=f"{job.id}-{name.rsplit('.', 1)[-1]}")
            if arcname in used:  # two photos with the same name: keep both
                arcname = f"{job.id}/{arcname}"
            used.add(arcname)
            members.append((arcname, path))
    return members


def _open_members(members: list[tuple[str, Path]]) -> list[tuple[str, BinaryIO]]:
    """Open the files of ``members``; those already gone are left out."""
    opened = []
    try:
        for arcname, path in members:
            try:
                opened.append((arcname, cast(BinaryIO, open(path, "rb"))))  # noqa: SIM115
            except (FileNotFoundError, IsADirectoryError):
                continue
    except BaseException:
        for _, source in opened:
            source.close()
        raise
    return opened


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable sink whose written bytes are collected for streaming."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def _stream_zip(members: list[tuple[str, BinaryIO]]) -> Iterator[bytes]:
    """The zip of ``members`` (already open; each is closed once written, all at the end
    if the client goes away)."""
    sink = _Pipe()
    try:
        # PLY data compresses poorly and fast download matters more: store, don't deflate.
        with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
            for arcname, source in members:
                with source, archive.open(arcname, "w", force_zip64=True) as dest:
                    while chunk := source.read(1 << 20):
                        dest.write(chunk)
                        yield sink.take()
        yield sink.take()
    finally:
        for _, source in members:
            source.close()
