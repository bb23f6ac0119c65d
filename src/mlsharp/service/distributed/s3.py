"""``S3Storage``: job inputs and results in S3-compatible object storage.

Object keys (under ``s3_prefix``)::

    jobs/<job id>/input<.suffix>     the upload, exactly as received
    jobs/<job id>/out/<file name>    one object per output format

It implements the :class:`~mlsharp.service.storage.Storage` interface the runner uses:
the paths it returns are local working copies in ``<data_dir>/s3-staging`` (the worker
downloads the input there and writes results there), and :meth:`commit_outputs` uploads
the results before the job is marked succeeded, then drops the local copies. Downloads
go through :meth:`remote_result`: streamed by the API (``s3_downloads: stream``) or a
``307`` redirect to a presigned URL (``redirect``), so large files skip the API.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlsharp.config import Settings
from mlsharp.errors import NotFound
from mlsharp.service.distributed.blobs import S3Blobs
from mlsharp.service.jobs import JobRecord


def _job(job_id: str) -> str:
    if not job_id or "/" in job_id or "\\" in job_id or job_id in (".", ".."):
        raise ValueError(f"invalid job id {job_id!r}")
    return f"jobs/{job_id}"


class S3Storage:
    """Job files in a bucket (see the module docstring)."""

    def __init__(self, settings: Settings, staging: Path) -> None:
        self.settings = settings
        self.blobs = S3Blobs(settings, staging)
        self.staging = self.blobs.staging

    def save_input(self, job_id: str, data: bytes, suffix: str) -> Path:
        """Upload the input; returns where a worker's local copy will be."""
        name = f"{_job(job_id)}/input{suffix}"
        self.blobs.put_bytes(name, data)
        return self.staging / name

    def input_path(self, job_id: str, suffix: str) -> Path:
        """A local copy of the input, downloaded if needed."""
        name = f"{_job(job_id)}/input{suffix}"
        return self.blobs.local_path(name) or self.staging / name

    def output_dir(self, job_id: str) -> Path:
        """The local folder results are written to before :meth:`commit_outputs`."""
        path = self.staging / _job(job_id) / "out"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_path(self, job_id: str, file_name: str) -> Path:
        """The local working path of one result file."""
        if "/" in file_name or "\\" in file_name or file_name in ("", ".", ".."):
            raise ValueError(f"invalid output file name {file_name!r}")
        return self.staging / _job(job_id) / "out" / file_name

    def commit_outputs(self, job_id: str, outputs: dict[str, str]) -> None:
        """Upload the job's result files, then drop its local working copies."""
        for name in outputs.values():
            self.blobs.put_file(f"{_job(job_id)}/out/{name}", self.output_path(job_id, name))
        self.release(job_id)

    def release(self, job_id: str) -> None:
        """Drop the local working copies of a finished job (the bucket keeps the files)."""
        shutil.rmtree(self.staging / _job(job_id), ignore_errors=True)

    def delete_job(self, job_id: str) -> None:
        """Remove the job's objects and local copies."""
        self.blobs.delete_prefix(_job(job_id))

    def remote_result(self, job: JobRecord, fmt: str, name: str) -> Any:
        """The download response of one result: streamed, or a 307 to a presigned URL."""
        from fastapi.responses import RedirectResponse, StreamingResponse

        from mlsharp.service.preview import media_type as media_type_of

        media_type = media_type_of(fmt)  # a scene format's, or the preview's image/png
        key = f"{_job(job.id)}/out/{name}"
        if self.settings.s3_downloads == "redirect":
            url = self.blobs.presign(
                key, seconds=self.settings.s3_presign_seconds, filename=name, media_type=media_type
            )
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        found = self.blobs.open(key)
        if found is None:
            raise NotFound(f"the {fmt} result of job {job.id} is no longer stored")
        body = found["Body"]
        return StreamingResponse(
            body.iter_chunks(1 << 20),
            media_type=media_type,
            headers={
                "Content-Length": str(found["ContentLength"]),
                "ETag": found.get("ETag", ""),
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "private, max-age=3600",
            },
        )
