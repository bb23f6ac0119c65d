"""Job files and shared blobs in S3-compatible object storage (scale-out mode).

Object keys (under ``s3_prefix``)::

    jobs/<job id>/input<.suffix>     the upload, exactly as received
    jobs/<job id>/out/<file name>    one object per output format
    cache/<key[:2]>/<key>/result.<format>   result cache entries

``S3Storage`` implements :class:`~mlsharp.service.files.ports.Storage`: the paths it
returns are local working copies in ``<data_dir>/s3-staging`` (the worker downloads the
input there and writes results there), and :meth:`S3Storage.commit_outputs` uploads the
results before the job is marked succeeded, then drops the local copies. A download is
streamed by the API (``s3_downloads: stream``) or a presigned URL the client is
redirected to (``redirect``), so large files skip the API.

``S3Blobs`` implements :class:`~mlsharp.service.files.ports.Blobs`; ``local_path``
downloads a copy into a staging folder, bounded by ``local_budget``: the least recently
used copies older than a minute are deleted when it grows past it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mlsharp._atomic import temp_path_for
from mlsharp.config import Settings
from mlsharp.errors import ConfigError, ServiceUnavailable
from mlsharp.names import content_disposition
from mlsharp.service.files.local import check_blob_name, check_file_name, check_job_id
from mlsharp.service.files.ports import Download, Redirect, Stream
from mlsharp.service.optional import require

#: Local copies younger than this are never pruned: a caller may be linking them now.
_MIN_COPY_AGE_S = 60.0


class S3Blobs:
    """Blobs as objects ``<s3_prefix><prefix><name>`` in the bucket; local copies under
    ``staging``, at most ``local_budget`` bytes of them (``None``: the owner deletes them)."""

    def __init__(
        self,
        settings: Settings,
        staging: Path,
        *,
        prefix: str = "",
        local_budget: int | None = None,
    ) -> None:
        boto3 = require("boto3")
        from botocore.config import Config

        if not settings.s3_bucket:
            raise ConfigError("storage s3 needs a bucket: set s3_bucket (MLSHARP_S3_BUCKET)")
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix + prefix
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.local_budget = local_budget
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5),
        )
        self.errors = (require("botocore.exceptions").BotoCoreError,)

    def key(self, name: str) -> str:
        """The object key of ``name``."""
        return self.prefix + check_blob_name(name)

    def _unavailable(self, error: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"object storage unavailable ({type(error).__name__})")

    def _refused(self, error: Any) -> ServiceUnavailable:
        code = error.response.get("Error", {}).get("Code", "error")
        return ServiceUnavailable(f"object storage refused the request ({code})")

    def put_file(self, name: str, src: Path) -> None:
        """Upload ``src`` (multipart for large files)."""
        try:
            self.client.upload_file(str(src), self.bucket, self.key(name))
        except self.errors as error:
            raise self._unavailable(error) from error

    def put_bytes(self, name: str, data: bytes) -> None:
        """Upload ``data`` as one object."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data)
        except self.errors as error:
            raise self._unavailable(error) from error

    def local_path(self, name: str) -> Path | None:
        """A local copy (downloaded once into the staging folder), or ``None`` if absent."""
        path = self.staging / check_blob_name(name)
        if path.is_file():
            with contextlib.suppress(OSError):  # most recently used: pruned last
                os.utime(path)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path_for(path)
        try:
            self.client.download_file(self.bucket, self.key(name), str(tmp))
        except self.client.exceptions.ClientError as error:
            tmp.unlink(missing_ok=True)
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise self._refused(error) from error
        except self.errors as error:
            tmp.unlink(missing_ok=True)
            raise self._unavailable(error) from error
        tmp.replace(path)
        self._prune(keep=path)
        return path

    def _prune(self, keep: Path) -> None:
        """Delete the least recently used local copies past ``local_budget`` bytes."""
        if self.local_budget is None:
            return
        copies = []
        for path in self.staging.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    stat = path.stat()
                    copies.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in copies)
        now = time.time()
        for mtime, size, path in sorted(copies):
            if total <= self.local_budget:
                break
            if path == keep or now - mtime < _MIN_COPY_AGE_S:
                continue
            path.unlink(missing_ok=True)
            total -= size
            with contextlib.suppress(OSError):  # the entry's folder, once empty
                path.parent.rmdir()

    def open(self, name: str) -> dict[str, Any] | None:
        """``GetObject``'s answer (``Body`` streams), or ``None`` if absent."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(name))
        except self.client.exceptions.NoSuchKey:
            return None
        except self.errors as error:
            raise self._unavailable(error) from error

    def presign(self, name: str, *, seconds: int, filename: str, media_type: str) -> str:
        """A time-limited GET URL that downloads the object under ``filename``."""
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.key(name),
                "ResponseContentDisposition": content_disposition(filename),
                "ResponseContentType": media_type,
            },
            ExpiresIn=seconds,
        )

    def _listed(self, prefix: str) -> list[str]:
        """Object keys under ``prefix`` (paginated)."""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            return [item["Key"] for page in pages for item in page.get("Contents", [])]
        except self.errors as error:
            raise self._unavailable(error) from error
        except self.client.exceptions.ClientError as error:  # refused: retried later
            raise self._refused(error) from error

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` and the local copies."""
        folder = check_blob_name(prefix.rstrip("/"))
        shutil.rmtree(self.staging / folder, ignore_errors=True)
        keys = self._listed(self.key(folder) + "/")
        try:
            for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 at most
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        except self.errors as error:
            raise self._unavailable(error) from error
        except self.client.exceptions.ClientError as error:
            raise self._refused(error) from error

    def delete(self, name: str) -> None:
        """Delete one object and its local copy."""
        (self.staging / check_blob_name(name)).unlink(missing_ok=True)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))
        except self.errors as error:
            raise self._unavailable(error) from error

    def names(self) -> list[str]:
        """Every blob name under this prefix."""
        return sorted(key.removeprefix(self.prefix) for key in self._listed(self.prefix))


def _job(job_id: str) -> str:
    return f"jobs/{check_job_id(job_id)}"


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
        return self.staging / _job(job_id) / "out" / check_file_name(file_name)

    def commit_outputs(self, job_id: str, outputs: dict[str, str]) -> None:
        """Upload the job's result files, then drop its local working copies."""
        for name in outputs.values():
            self.blobs.put_file(f"{_job(job_id)}/out/{name}", self.output_path(job_id, name))
        self.release(job_id)

    def release(self, job_id: str) -> None:
        """Drop the local working copies of a finished job (the bucket keeps the files)."""
        shutil.rmtree(self.staging / _job(job_id), ignore_errors=True)

    def download(self, job_id: str, file_name: str, *, media_type: str) -> Download | None:
        """A presigned URL (``s3_downloads: redirect``) or the object's stream."""
        name = f"{_job(job_id)}/out/{check_file_name(file_name)}"
        if self.settings.s3_downloads == "redirect":
            url = self.blobs.presign(
                name,
                seconds=self.settings.s3_presign_seconds,
                filename=file_name,
                media_type=media_type,
            )
            return Redirect(url)
        found = self.blobs.open(name)
        if found is None:
            return None
        return Stream(
            chunks=found["Body"].iter_chunks(1 << 20),
            length=int(found["ContentLength"]),
            etag=found.get("ETag", ""),
        )

    def delete_job(self, job_id: str) -> None:
        """Remove the job's objects and local copies."""
        self.blobs.delete_prefix(_job(job_id))
