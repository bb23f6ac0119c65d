"""Finding, downloading and loading SHARP checkpoints.

This module answers three questions for the rest of mlsharp:

* *Where are the weights?* :func:`resolve_checkpoint` picks, in this order, an explicit
  path or URL, the ``MLSHARP_CHECKPOINT`` environment variable, the file in the cache
  (:func:`cache_dir`), or downloads Apple's released checkpoint into the cache.
* *How do I fetch them robustly?* :func:`download` streams to a ``.part`` file next to the
  destination, resumes it with an HTTP Range request after a dropped connection, verifies
  size and SHA-256 when known, and moves the finished file into place atomically.
* *How do I load them?* :func:`load_state_dict` reads a ``.pt`` file safely
  (``weights_only=True``, memory-mapped) and :func:`load_into` checks keys and shapes
  against a model before loading, with a one-line error naming what differs.

Importing this module is cheap: torch and tqdm are imported inside the functions that
need them. Every user error is an :class:`~mlsharp.errors.CheckpointError` (or one of its
subclasses) with a one-line message.

Environment variables:

``MLSHARP_CACHE``
    Directory for downloaded checkpoints (default: the platform cache directory).
``MLSHARP_CHECKPOINT``
    Path (or http(s) URL) of the checkpoint to use when none is given explicitly.
``MLSHARP_CHECKPOINT_URL``
    Where to download the default checkpoint from (a mirror). The file is still stored
    as :data:`DEFAULT_CHECKPOINT_NAME` and still checked against the known size and
    SHA-256 when those are set, so a mirror must serve the same bytes.

Concurrency: :func:`download` holds an exclusive OS lock (``fcntl.flock`` on POSIX,
``msvcrt.locking`` on Windows) on ``<dest>.lock`` while it writes ``<dest>.part``. The lock
is released by the OS if the process dies, so a crash never leaves a stale lock; a second
process waits for the first and, when the first finished, returns its file instead of
downloading again. One shared ``.part`` name (rather than one per pid) is what lets a
later process resume an interrupted download.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsharp._atomic import fsync_directory
from mlsharp._version import __version__
from mlsharp.errors import CheckpointError, CheckpointNotFound, DownloadError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CHECKPOINT_NAME",
    "DEFAULT_CHECKPOINT_URL",
    "DEFAULT_RETRY_DELAY",
    "KNOWN_CHECKPOINTS",
    "CheckpointInfo",
    "cache_dir",
    "default_checkpoint_path",
    "default_checkpoint_url",
    "download",
    "download_checkpoint",
    "load_into",
    "load_state_dict",
    "memoized_sha256",
    "resolve_checkpoint",
    "sha256_file",
]

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_URL = "https://ml-site.cdn-apple.com/models/sharp/sharp_2572gikvuh.pt"
DEFAULT_CHECKPOINT_NAME = "sharp_2572gikvuh.pt"

#: First pause (seconds) between download retries; it doubles on each further retry.
DEFAULT_RETRY_DELAY = 1.0
_MAX_RETRY_DELAY = 30.0

# HTTP statuses worth retrying: the server may answer differently a moment later.
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2, as written by torch's legacy format


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint that mlsharp knows how to fetch.

    Attributes:
        name: file name in the cache directory.
        url: where to download it.
        size: size in bytes, checked after download when set.
        sha256: lowercase hex SHA-256, checked after download when set.
    """

    name: str
    url: str
    size: int | None = None
    sha256: str | None = None


KNOWN_CHECKPOINTS: dict[str, CheckpointInfo] = {
    DEFAULT_CHECKPOINT_NAME: CheckpointInfo(
        name=DEFAULT_CHECKPOINT_NAME,
        url=DEFAULT_CHECKPOINT_URL,
        # Size and SHA-256 of Apple's release are not recorded yet (the file could not be
        # fetched where this was written). Fill them in from a verified copy; download()
        # checks them whenever they are set.
        size=None,
        sha256=None,
    ),
}


# --------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Return the directory where mlsharp keeps downloaded checkpoints.

    ``$MLSHARP_CACHE`` if set; otherwise the platform cache directory:
    ``$XDG_CACHE_HOME/mlsharp`` or ``~/.cache/mlsharp`` on Linux and other POSIX systems,
    ``~/Library/Caches/mlsharp`` on macOS, ``%LOCALAPPDATA%\\mlsharp\\Cache`` on Windows.
    The directory is not created here.
    """
    env = os.environ.get("MLSHARP_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "mlsharp" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mlsharp"
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative paths are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "mlsharp"


def default_checkpoint_url() -> str:
    """Return the URL of the default checkpoint (``$MLSHARP_CHECKPOINT_URL`` overrides it)."""
    return os.environ.get("MLSHARP_CHECKPOINT_URL") or DEFAULT_CHECKPOINT_URL


def default_checkpoint_path() -> Path:
    """Return where the default checkpoint lives in the cache (it may not exist yet)."""
    return cache_dir() / DEFAULT_CHECKPOINT_NAME


# --------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Return the lowercase hex SHA-256 of a file, read in ``chunk_size`` pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def memoized_sha256(path: str | os.PathLike[str], memo_file: Path | None = None) -> str:
    """SHA-256 of a file, remembered per (resolved path, size, mtime) in ``memo_file``.

    Hashing Apple's 2.6 GB checkpoint takes seconds; this makes the second call instant.
    ``memo_file`` defaults to ``cache_dir() / "checkpoint-digests.json"``. A changed file
    (size or mtime) is hashed again; an unreadable memo is ignored and rewritten
    atomically. Concurrent writers may drop each other's new entries (they are recomputed).
    """
    import json

    from mlsharp._atomic import atomic_write

    file = Path(path)
    stat = file.stat()
    memo_path = memo_file if memo_file is not None else cache_dir() / "checkpoint-digests.json"
    ident = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    digest = memo.get(ident)
    if not isinstance(digest, str):
        digest = sha256_file(file)
        memo[ident] = digest
        with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash later
            atomic_write(memo_path, [json.dumps(memo, indent=1).encode()])
    return digest


# --------------------------------------------------------------------------------------
# Locking
# --------------------------------------------------------------------------------------


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without blocking; return whether it was taken."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path``; yield whether we had to wait for it.

    POSIX: the lock file is removed on release. Removing it is safe because a waiter
    checks, after acquiring, that the file it locked is still the one at ``lock_path``
    (same inode) and starts over otherwise. Windows: the lock file is left in place.
    """
    waited = False
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                if not waited:
                    log.info("waiting for another process to finish writing %s", lock_path)
                waited = True
                while not _try_lock(fd):
                    time.sleep(0.1)
            try:
                on_disk = os.stat(lock_path)
                mine = os.fstat(fd)
                same = (on_disk.st_ino, on_disk.st_dev) == (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed it after we opened it: lock the new one
                os.close(fd)
                continue
        except BaseException:
            os.close(fd)
            raise
        break
    try:
        yield waited
    finally:
        if sys.platform != "win32":
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
        os.close(fd)  # closing releases the lock


# --------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------


class _Transient(Exception):
    """An attempt failed in a way that a retry (resuming the .part) may fix."""

    def __init__(
        self, reason: str, cause: BaseException | None = None, *, connected: bool = True
    ) -> None:
        super().__init__(reason)
        self.cause = cause
        self.connected = connected  # False: the server could not be reached at all


class _Restart(Exception):
    """The .part cannot be resumed: it was removed and the download starts from zero."""


def _describe(e: BaseException) -> str:
    """A short, one-line description of a network exception."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}".strip()
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        return _describe(reason) if isinstance(reason, BaseException) else str(reason)
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into (START, TOTAL)."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _verify(path: Path, url: str, expected_size: int | None, sha256: str | None) -> str | None:
    """Return why ``path`` is not the expected file, or None when it is."""
    size = _file_size(path)
    if expected_size is not None and size != expected_size:
        return f"size mismatch for {url}: expected {expected_size} bytes, got {size}"
    if sha256 is not None:
        got = sha256_file(path)
        if got != sha256.lower():
            return f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got}"
    return None


class _Progress:
    """A lazily created tqdm bar on stderr that survives restarts and resumes."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc = desc
        self.enabled = enabled
        self.bar: Any = None

    def start(self, total: int | None, done: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                desc=self.desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not self.enabled,
                dynamic_ncols=True,
            )
        else:
            self.bar.reset(total=total)
            self.bar.update(done)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _attempt(
    url: str,
    part: Path,
    *,
    expected_size: int | None,
    timeout: float,
    chunk_size: int,
    bar: _Progress,
) -> None:
    """Make one request and append to ``part`` until the body ends.

    Returns normally when ``part`` holds the whole body. Raises :class:`_Transient` for
    failures a retry may fix (the bytes received so far stay in ``part``), :class:`_Restart`
    when ``part`` had to be discarded, and :class:`DownloadError` for final failures.
    """
    offset = _file_size(part)
    if expected_size is not None and offset > expected_size:
        log.info("discarding %s: larger than the expected %d bytes", part, expected_size)
        _remove(part)
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # a complete .part left by an interrupted run: only verification remains

    headers = {
        "User-Agent": f"mlsharp/{__version__} (+python-urllib)",
        "Accept-Encoding": "identity",
    }
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        with contextlib.suppress(Exception):
            e.close()
        if e.code == 416 and offset:
            _, total = _parse_content_range(e.headers.get("Content-Range"))
            if total is not None and total == offset:
                return  # the .part already holds the whole file
            log.info("server refused to resume %s (HTTP 416); starting over", url)
            _remove(part)
            raise _Restart() from e
        if e.code in _RETRYABLE_STATUS:
            raise _Transient(_describe(e), e) from e
        raise DownloadError(f"download of {url} failed: {_describe(e)}") from e
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, timeout, reset
        raise _Transient(_describe(e), e, connected=False) from e

    with response:
        status = response.status
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                log.info("server sent an unexpected range for %s; starting over", url)
                _remove(part)
                raise _Restart()
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        else:  # 200 (or another 2xx): the whole file, whatever we asked for
            if offset:
                log.info("server does not support resuming %s; starting over", url)
            offset = 0
            total = length
            mode = "wb"
        if expected_size is not None and total is not None and total != expected_size:
            _remove(part)
            raise DownloadError(
                f"size mismatch for {url}: expected {expected_size} bytes, "
                f"the server reports {total}"
            )

        bar.start(total, offset)
        received = 0
        try:
            f = open(part, mode)  # noqa: SIM115 - closed in the finally below
        except OSError as e:
            raise DownloadError(f"cannot write {part}: {e.strerror or e}") from e
        try:
            while True:
                try:
                    chunk = response.read(chunk_size)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(
                        f"connection lost after {offset + received} bytes: {_describe(e)}", e
                    ) from e
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise DownloadError(f"cannot write {part}: {e.strerror or e}") from e
                received += len(chunk)
                bar.update(len(chunk))
                if total is not None and offset + received > total:
                    f.close()  # before removing it (Windows)
                    _remove(part)
                    raise DownloadError(
                        f"download of {url} failed: the server sent more than the "
                        f"announced {total} bytes"
                    )
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise DownloadError(f"cannot write {part}: {e.strerror or e}") from e
        finally:
            f.close()

    end = total if total is not None else (offset + length if length is not None else None)
    if end is not None and offset + received < end:
        raise _Transient(f"connection closed after {offset + received} of {end} bytes")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    retries: int = 3,
    retry_delay: float | None = None,
) -> Path:
    """Download ``url`` to ``dest`` safely and return ``dest``.

    The body is streamed to ``<dest>.part`` and moved to ``dest`` with ``os.replace``
    only once it is complete and verified, so a partial file never sits at ``dest``.

    * **Resume**: a ``.part`` left by an earlier run is continued with a Range request
      when the server answers 206; a 200 answer (Range ignored), a 416 or a ``.part``
      larger than ``expected_size`` restarts cleanly from zero.
    * **Retries**: a dropped connection, a timeout, a connection error or an HTTP
      408/429/5xx is retried after ``retry_delay`` seconds (default
      :data:`DEFAULT_RETRY_DELAY`), doubling up to 30 s. ``retries`` bounds the failures
      *in a row that made no progress*; an attempt that grows the ``.part`` resets the
      count, so a long download over a flaky link keeps going. While the server has not
      answered once in this call (offline, DNS failure, refused), at most one retry is
      made, so being offline is reported quickly. When retries run out,
      :class:`DownloadError` is raised and the ``.part`` stays for a later resume.
    * **Verification**: the Content-Length (or Content-Range total) is compared with the
      bytes received, and ``expected_size`` and ``sha256`` (hex) when given. A mismatch
      deletes the ``.part`` and raises :class:`DownloadError` naming expected vs got.
      If the mismatching file was built on a ``.part`` left by an earlier run, it is
      downloaded once more from zero before giving up.
    * **Concurrency**: an OS lock on ``<dest>.lock`` serialises writers of the same
      ``dest``; a process that had to wait returns the file the other one finished.
    * **Durability**: the ``.part`` is fsynced before the rename, the directory after.

    Args:
        url: http(s) URL to fetch; redirects are followed.
        dest: final path; its directory is created if needed.
        expected_size: size in bytes the file must have.
        sha256: hex SHA-256 the file must have.
        progress: show a tqdm progress bar on stderr.
        timeout: seconds to wait for the connection and for each read.
        chunk_size: bytes per read.
        retries: failed attempts in a row without progress that are retried.
        retry_delay: first pause between retries in seconds.

    Raises:
        DownloadError: the download failed or the file does not match.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url}: only http:// and https:// URLs work")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {dest.parent}: {e.strerror or e}") from e
    lock = dest.with_name(dest.name + ".lock")
    with contextlib.ExitStack() as stack:
        try:
            waited = stack.enter_context(_exclusive(lock))
        except OSError as e:
            raise DownloadError(f"cannot lock {lock}: {e.strerror or e}") from e
        if waited and dest.is_file() and _verify(dest, url, expected_size, sha256) is None:
            log.info("%s was downloaded by another process", dest)
            return dest
        bar = stack.enter_context(contextlib.closing(_Progress(dest.name, progress)))
        _download_locked(
            url,
            dest,
            expected_size=expected_size,
            sha256=sha256,
            timeout=timeout,
            chunk_size=chunk_size,
            retries=retries,
            retry_delay=DEFAULT_RETRY_DELAY if retry_delay is None else retry_delay,
            bar=bar,
        )
    fsync_directory(dest.parent)
    return dest


def _download_locked(
    url: str,
    dest: Path,
    *,
    expected_size: int | None,
    sha256: str | None,
    timeout: float,
    chunk_size: int,
    retries: int,
    retry_delay: float,
    bar: _Progress,
) -> None:
    """The body of :func:`download`, run while holding the lock on ``dest``."""
    part = dest.with_name(dest.name + ".part")
    leftover = _file_size(part) > 0
    best = _file_size(part)
    failures = restarts = 0
    reached = False  # whether any attempt got an answer from the server
    while True:
        try:
            _attempt(
                url,
                part,
                expected_size=expected_size,
                timeout=timeout,
                chunk_size=chunk_size,
                bar=bar,
            )
        except _Restart:
            restarts += 1
            if restarts > 3:
                raise DownloadError(
                    f"download of {url} failed: the server keeps sending the wrong byte range"
                ) from None
            leftover = False
            best = 0
            continue
        except _Transient as e:
            reached = reached or e.connected
            size = _file_size(part)
            if size > best:
                best, failures = size, 0
            else:
                failures += 1
            # A server never reached (offline, DNS, refused) gets one retry, not `retries`:
            # the retries are there to carry a long transfer over a flaky link.
            if failures > (retries if reached else min(retries, 1)):
                kept = f"; {size} bytes kept in {part}, run again to resume" if size else ""
                err = DownloadError(f"download of {url} failed: {e}{kept}")
                err.network_reason = f"{e}{kept}"  # type: ignore[attr-defined]
                raise err from (e.cause or e)
            pause = min(retry_delay * 2 ** max(failures - 1, 0), _MAX_RETRY_DELAY)
            log.warning("download of %s interrupted (%s); retrying in %.0f s", url, e, pause)
            time.sleep(pause)
            continue
        problem = _verify(part, url, expected_size, sha256)
        if problem is None:
            break
        _remove(part)
        if leftover:  # the old .part may come from another version of the file
            log.warning("%s; the .part left by an earlier run was bad, starting over", problem)
            leftover = False
            best = failures = 0
            continue
        raise DownloadError(problem)
    try:
        os.replace(part, dest)
    except OSError as e:
        raise DownloadError(f"cannot move {part} to {dest}: {e.strerror or e}") from e


def download_checkpoint(
    name: str = DEFAULT_CHECKPOINT_NAME,
    dest: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Download a known checkpoint (default: Apple's SHARP release) and return its path.

    ``dest`` defaults to ``cache_dir() / name``. The default checkpoint's URL can be
    overridden with ``$MLSHARP_CHECKPOINT_URL``. Size and SHA-256 from
    :data:`KNOWN_CHECKPOINTS` are verified when they are set.

    Raises:
        CheckpointError: ``name`` is not a known checkpoint.
        DownloadError: the download failed.
    """
    info = KNOWN_CHECKPOINTS.get(name)
    if info is None:
        known = ", ".join(sorted(KNOWN_CHECKPOINTS))
        raise CheckpointError(f"unknown checkpoint {name!r} (known: {known})")
    url = default_checkpoint_url() if name == DEFAULT_CHECKPOINT_NAME else info.url
    target = Path(dest) if dest is not None else cache_dir() / info.name
    return download(url, target, expected_size=info.size, sha256=info.sha256, progress=progress)


# --------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------


def _is_url(value: str | os.PathLike[str]) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _is_network_failure(e: DownloadError) -> bool:
    """Whether a download failed for lack of network (not a 404, size or checksum)."""
    cause = e.__cause__
    return (
        getattr(e, "network_reason", None) is not None
        and isinstance(cause, OSError)
        and not isinstance(cause, urllib.error.HTTPError)
    )


def _how_to_get(url: str, cache_path: Path) -> str:
    return (
        f"get the weights with `mlsharp download` on a machine with network access, or "
        f"download {url} yourself and put it at {cache_path}, or pass --checkpoint PATH "
        f"(or set MLSHARP_CHECKPOINT=PATH)"
    )


def _existing_file(path: Path, origin: str) -> Path:
    if not path.exists():
        raise CheckpointNotFound(f"checkpoint not found: {path}{origin}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}{origin} is a directory, not a .pt file")
    return path


def _fetch_into_cache(url: str, dest: Path, *, download: bool, progress: bool) -> Path:
    if dest.is_file():
        return dest
    if not download:
        raise CheckpointNotFound(
            f"no checkpoint at {dest} and downloading is disabled; {_how_to_get(url, dest)}"
        )
    info = KNOWN_CHECKPOINTS.get(dest.name)
    size, digest = (info.size, info.sha256) if info else (None, None)
    try:
        return _download_impl(url, dest, expected_size=size, sha256=digest, progress=progress)
    except DownloadError as e:
        if not _is_network_failure(e):
            raise
        reason = getattr(e, "network_reason", None) or str(e)
        raise CheckpointNotFound(
            f"cannot download the SHARP checkpoint from {url} ({reason}); {_how_to_get(url, dest)}"
        ) from e


_download_impl = download  # resolve_checkpoint's `download` flag shadows the function


def resolve_checkpoint(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Return the path of the checkpoint to use, downloading it if needed.

    Precedence: ``checkpoint`` if given, else ``$MLSHARP_CHECKPOINT``, else
    ``cache_dir() / DEFAULT_CHECKPOINT_NAME`` if present, else that file is downloaded
    (from ``$MLSHARP_CHECKPOINT_URL`` or :data:`DEFAULT_CHECKPOINT_URL`) when ``download``
    is true. ``checkpoint`` (and the environment variable) may also be an http(s) URL: it
    is downloaded into the cache under the URL's file name, once.

    Raises:
        CheckpointNotFound: a given path does not exist, or there is no local checkpoint
            and it could not be downloaded (no network, or ``download=False``); the
            message says how to get the weights.
        DownloadError: the download failed for another reason (HTTP error, bad size or
            checksum).
    """
    origin = ""
    if checkpoint is None or (isinstance(checkpoint, str) and not checkpoint.strip()):
        env = os.environ.get("MLSHARP_CHECKPOINT", "").strip()
        if env:
            checkpoint, origin = env, " (from MLSHARP_CHECKPOINT)"
    if checkpoint is not None:
        if _is_url(checkpoint):
            url = str(checkpoint)
            name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
            if not name:
                raise CheckpointError(f"cannot tell the checkpoint's file name from {url}")
            return _fetch_into_cache(url, cache_dir() / name, download=download, progress=progress)
        return _existing_file(Path(checkpoint).expanduser(), origin)
    return _fetch_into_cache(
        default_checkpoint_url(),
        default_checkpoint_path(),
        download=download,
        progress=progress,
    )


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _short_reason(e: BaseException) -> str:
    """A one-line reason for a torch.load failure."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        first = detail[0].split(". ")[0].rstrip(".") if detail else ""
        return f"it holds objects a weights file may not contain ({first})"
    if isinstance(e, EOFError):
        return "unexpected end of file (truncated?)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    first = lines[0].split(". ")[0].rstrip(".")
    if "zip archive" in first or "central directory" in first:
        first += " (truncated or corrupt?)"
    return first if len(first) <= 200 else first[:197] + "..."


def _unwrap(obj: Any) -> Any:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` containers and ``module.``."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and k.startswith("module.") for k in obj)
    ):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a ``{name: tensor}`` dict on the CPU, memory-mapped if possible.

    Uses ``torch.load(path, map_location="cpu", weights_only=True, mmap=True)`` (so no
    code in the file runs, and the tensors are paged in lazily), and falls back to
    ``mmap=False`` for the legacy non-zip format or where mapping fails. Common
    containers (``{"state_dict": ...}``, ``{"model": ...}``, a ``module.`` prefix) are
    unwrapped. Tensors keep the dtype stored in the file.

    Raises:
        CheckpointNotFound: ``path`` does not exist.
        CheckpointError: the file is not a readable PyTorch checkpoint of tensors (empty,
            truncated, not a torch file, disallowed pickled objects, non-tensor values).
    """
    import torch

    path = Path(path)
    hint = (
        "is it a SHARP .pt file? If it was downloaded, delete it and download it again "
        "(`mlsharp download`)"
    )

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"cannot read checkpoint {path}: {reason}; {hint}")

    if not path.exists():
        raise CheckpointNotFound(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a .pt file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise fail(e.strerror or str(e)) from e
    if not head:
        raise fail("the file is empty")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise fail("not a PyTorch file (unknown header)")

    def load(mmap: bool) -> Any:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        if head.startswith(_ZIP_MAGIC):
            try:
                obj = load(mmap=True)
            except Exception as e:
                log.debug("mmap load of %s failed (%s); reading it into memory", path, e)
                obj = load(mmap=False)
        else:  # legacy (pre-1.6) format: cannot be memory-mapped
            obj = load(mmap=False)
    except Exception as e:
        raise fail(_short_reason(e)) from e

    obj = _unwrap(obj)
    if not isinstance(obj, Mapping):
        raise fail(f"it holds a {type(obj).__name__}, not a state dict")
    if not obj:
        raise fail("the state dict is empty")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise fail(f"it has a non-string key {key!r}")
        if not isinstance(value, torch.Tensor):
            raise fail(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key] = value
    return state


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _shape(t: Any) -> str:
    return "[" + ",".join(str(d) for d in t.shape) + "]"


def load_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    what: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    assign: bool = True,
) -> None:
    """Load ``state_dict`` into ``model`` after checking that keys and shapes match.

    The comparison with ``model.state_dict()`` happens first, so a mismatch raises one
    :class:`CheckpointError` listing every kind of difference, e.g. ``checkpoint X does
    not match the model (preset 'sharp'): 3 missing keys (first: a, b, c), 1 shape
    mismatch (first: k: checkpoint [2,32,1,1] vs model [1,32,1,1])``, and the model is
    left untouched.

    Then ``model.load_state_dict(state_dict, strict=True, assign=assign)``. With the
    default ``assign=True`` the checkpoint tensors *become* the parameters and buffers
    (``requires_grad`` is kept from the model): a model built on the ``meta`` device gets
    the memory-mapped tensors without a copy, and the model takes the checkpoint's dtype
    and device (CPU) — call ``model.to(device, dtype)`` afterwards. Pass ``assign=False``
    to copy into a model's existing tensors instead (keeps its dtype and device; not
    possible for a ``meta`` model).

    Args:
        model: the module to fill.
        state_dict: e.g. from :func:`load_state_dict`.
        what: names the checkpoint in messages (usually its path).
        preset: names the model configuration in messages.
        assign: see above.

    Raises:
        CheckpointError: keys or shapes differ, or a value is not a tensor.
    """
    import torch

    label = f"checkpoint {what}" if what is not None else "checkpoint"
    for_preset = f" (preset {preset!r})" if preset else ""
    bad = next((k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"{label}: entry {bad!r} is a {type(state_dict[bad]).__name__}, not a tensor"
        )

    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(
                f"{_plural(len(missing), 'missing key')} (first: {', '.join(missing[:3])})"
            )
        if unexpected:
            parts.append(
                f"{_plural(len(unexpected), 'unexpected key')} (first: {', '.join(unexpected[:3])})"
            )
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{_plural(len(mismatched), 'shape mismatch', 'shape mismatches')} (first: "
                f"{k}: checkpoint {_shape(state_dict[k])} vs model {_shape(expected[k])})"
            )
        raise CheckpointError(f"{label} does not match the model{for_preset}: {', '.join(parts)}")
    try:
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except (RuntimeError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()
        raise CheckpointError(
            f"cannot load {label} into the model{for_preset}: "
            f"{reason[-1].strip() if reason else type(e).__name__}"
        ) from e
