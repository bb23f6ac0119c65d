"""The ports of job files: ``Storage`` (a job's input and results) and ``Blobs`` (named
files shared by every process, under the result cache and the object storage).

A result download is described, not answered: :class:`LocalFile`, :class:`Redirect` or
:class:`Stream`, which the API turns into an HTTP response (so storage never imports the
web framework).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class LocalFile:
    """The result is a file on this machine (served with ranges and an ETag)."""

    path: Path


@dataclass(frozen=True)
class Redirect:
    """The client fetches the result from ``url`` itself (a presigned URL)."""

    url: str


@dataclass(frozen=True)
class Stream:
    """The result's bytes, streamed through the API."""

    chunks: Iterator[bytes]
    length: int
    etag: str


Download = LocalFile | Redirect | Stream


class Storage(Protocol):
    """Job files: the uploaded input and the result files (local: ``local.py``; object
    storage: ``s3.py``). Paths returned are always on this machine: workers read and
    write real files, :meth:`commit_outputs` publishes results where the API finds them."""

    def save_input(self, job_id: str, data: bytes, suffix: str) -> Path:
        """Store the uploaded bytes; :class:`~mlsharp.errors.StorageFull` on a full disk."""
        ...

    def input_path(self, job_id: str, suffix: str) -> Path:
        """A local path of the job's input (downloaded first if it lives elsewhere)."""
        ...

    def output_dir(self, job_id: str) -> Path:
        """The local folder the job's results are written to (created on demand)."""
        ...

    def output_path(self, job_id: str, file_name: str) -> Path:
        """The local path of one result file of the job."""
        ...

    def commit_outputs(self, job_id: str, outputs: dict[str, str]) -> None:
        """Publish the written results (upload them; nothing to do for local files)."""
        ...

    def release(self, job_id: str) -> None:
        """Drop this machine's working copies of a finished job (nothing for local files)."""
        ...

    def download(self, job_id: str, file_name: str, *, media_type: str) -> Download | None:
        """Where a client gets one result file, or ``None`` if it is no longer stored."""
        ...

    def delete_job(self, job_id: str) -> None:
        """Remove every file of the job (missing is fine)."""
        ...


class Blobs(Protocol):
    """Files by name (``a/b/c.ext``), shared by every process. ``local_path`` always
    answers with a file on this machine (the file itself, or a downloaded copy)."""

    def put_file(self, name: str, src: Path) -> None:
        """Store ``src`` under ``name`` atomically (it replaces, never rewrites)."""
        ...

    def local_path(self, name: str) -> Path | None:
        """A local file with the blob's bytes, or ``None`` if there is no such blob."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob under the folder ``prefix`` (missing is fine)."""
        ...

    def delete(self, name: str) -> None:
        """Remove one blob (missing is fine)."""
        ...

    def names(self) -> list[str]:
        """Every blob name (a sweep of leftovers compares them with its index)."""
        ...
