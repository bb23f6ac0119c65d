"""The data directory's failure modes, as errors that say what happened and what to do.

* A write that fails because the disk is full, a quota or the file-size limit is reached
  (``ENOSPC``, ``EDQUOT``, ``EFBIG``; SQLite's "database or disk is full" and its failed
  writes) is :class:`~mlsharp.errors.StorageFull`: HTTP 507 at submission, the error code
  ``storage_full`` on a job (:func:`storage_error`).
* A database file that is damaged, or empty (a truncated copy: SQLite would silently
  start a new database in it), is :class:`~mlsharp.errors.CorruptDatabase`, whose one
  line names the file and what to do (:func:`open_database`).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from mlsharp.errors import CorruptDatabase, StorageError, StorageFull

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: SQLite's messages for a failed write ("disk I/O error" is what a file-size limit gives).
_SQLITE_FULL = ("database or disk is full", "disk I/O error")
_SQLITE_CORRUPT = ("file is not a database", "database disk image is malformed")


def storage_error(error: BaseException, where: str) -> StorageError | None:
    """The :class:`StorageError` that ``error`` (raised while writing ``where``) means,
    or ``None`` when it is not a storage failure."""
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        reason = {
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EFBIG: "the file size limit is reached",
        }[error.errno]
        return StorageFull(f"cannot write {where}: {reason}; free space in the data directory")
    if isinstance(error, sqlite3.Error):
        text = str(error)
        if any(marker in text for marker in _SQLITE_FULL):
            return StorageFull(
                f"cannot write {where} ({text}): the disk may be full or a file size limit "
                "reached; free space in the data directory"
            )
        if any(marker in text for marker in _SQLITE_CORRUPT):
            return CorruptDatabase(f"{where} is corrupt ({text})")
        if isinstance(error, sqlite3.OperationalError):  # locked, busy, cannot open...
            return StorageError(f"cannot use {where} right now ({text}); retry later")
    return None


def open_database(path: Path, *, what: str, schema: str) -> sqlite3.Connection:
    """Open (or create) the SQLite database ``path`` in WAL mode with ``schema`` applied.

    The connection is in autocommit mode (transactions are explicit) and usable from any
    thread (callers serialise with a lock). Raises :class:`CorruptDatabase` for a damaged
    or empty file and :class:`StorageError` when it cannot be opened at all; ``what``
    names the database in those messages ("the job database").
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size == 0:
        raise CorruptDatabase(
            f"{what} {path} is empty (0 bytes), so it holds no database: a truncated copy "
            "or a full disk? Restore it from a backup, or delete it to start with an empty "
            "one"
        )
    db = sqlite3.connect(path, check_same_thread=False, timeout=30.0, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
        db.executescript(schema)
    except sqlite3.DatabaseError as error:
        db.close()
        raise _open_error(path, what, error) from None
    return db


def _open_error(path: Path, what: str, error: sqlite3.DatabaseError) -> StorageError:
    text = str(error)
    if any(marker in text for marker in _SQLITE_CORRUPT):
        return CorruptDatabase(
            f"{what} {path} is corrupt ({text}): stop mlsharp, restore the file from a "
            "backup or move it away (what it held is then forgotten), and start again"
        )
    full = storage_error(error, f"{what} {path}")
    if full is not None:
        return full
    return StorageError(f"cannot open {what} {path}: {text}")
