"""Named files ("blobs") shared by every process: a local directory or an S3 bucket.

The scale-out cache and :class:`~mlsharp.service.distributed.s3.S3Storage` keep their
files through this small interface. ``local_path`` always answers with a file on this
machine: the file itself for a directory, a downloaded copy in a staging folder for S3
(the network, the writers and the cache work on real files). The staging folder of the
S3 cache is bounded (``local_budget``): the least recently used copies older than a
minute are deleted when it grows past it, whichever process evicted the entry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from mlsharp._atomic import temp_path_for
from mlsharp.config import Settings
from mlsharp.errors import ServiceUnavailable
from mlsharp.service.cache import link_or_copy
from mlsharp.service.distributed.redis_conn import require

#: Local copies younger than this are never pruned: a caller may be linking them now.
_MIN_COPY_AGE_S = 60.0


class Blobs(Protocol):
    """Files by name (``a/b/c.ext``), shared by all processes."""

    def put_file(self, name: str, src: Path) -> None: ...
    def local_path(self, name: str) -> Path | None: ...
    def delete_prefix(self, prefix: str) -> None: ...


def _check(name: str) -> str:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise ValueError(f"invalid blob name {name!r}")
    return name


class LocalBlobs:
    """Blobs as files under ``root`` (a directory every process can reach)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put_file(self, name: str, src: Path) -> None:
        """Hard-link or copy ``src`` in, atomically."""
        link_or_copy(Path(src), self.root / _check(name))

    def local_path(self, name: str) -> Path | None:
        """The file, or ``None``."""
        path = self.root / _check(name)
        return path if path.is_file() else None

    def delete_prefix(self, prefix: str) -> None:
        """Remove the folder ``prefix`` (missing is fine)."""
        shutil.rmtree(self.root / _check(prefix.rstrip("/")), ignore_errors=True)


class S3Blobs:
    """Blobs as objects ``<s3_prefix><name>`` in a bucket; local copies under ``staging``,
    at most ``local_budget`` bytes of them (``None``: the owner deletes them itself)."""

    def __init__(self, settings: Settings, staging: Path, local_budget: int | None = None) -> None:
        boto3 = require("boto3")
        from botocore.config import Config

        if not settings.s3_bucket:
            from mlsharp.errors import ConfigError

            raise ConfigError("storage s3 needs a bucket: set s3_bucket (MLSHARP_S3_BUCKET)")
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
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
        return self.prefix + _check(name)

    def _unavailable(self, error: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"object storage unavailable ({type(error).__name__})")

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
        path = self.staging / _check(name)
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
            raise
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
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
                "ResponseContentType": media_type,
            },
            ExpiresIn=seconds,
        )

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` and the local copies."""
        shutil.rmtree(self.staging / _check(prefix.rstrip("/")), ignore_errors=True)
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(prefix.rstrip("/")) + "/"
            )
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        except self.errors as error:
            raise self._unavailable(error) from error
        except self.client.exceptions.ClientError as error:  # refused: retried later
            code = error.response.get("Error", {}).get("Code", "error")
            raise ServiceUnavailable(f"object storage refused the deletion ({code})") from error
