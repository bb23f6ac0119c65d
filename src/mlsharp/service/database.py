"""``Database``: the embedded mode's one SQLite file, shared by its adapters.

Jobs, batches, the outbox and webhooks live in ``<data_dir>/jobs.sqlite3``, so a job's
final state and its webhook deliveries commit in one transaction. One connection (WAL,
autocommit mode: transactions are explicit) is shared under a lock; several processes
may share the file (SQLite locks it), and ``BEGIN IMMEDIATE`` makes each read-then-write
atomic across them. Errors of the disk become the error tree's
(:func:`~mlsharp.service.disk.storage_error`): a full disk is ``StorageFull``, never a 500.

Earlier versions kept webhooks in ``<data_dir>/webhooks.sqlite3``: :func:`merge_old_file`
moves them in once (the old file is renamed ``webhooks.sqlite3.merged``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from mlsharp.service.disk import open_database, storage_error

log = logging.getLogger("mlsharp.service")


class Database:
    """One SQLite file with ``schema`` applied (see the module docstring)."""

    def __init__(self, path: Path, *, what: str, schema: str) -> None:
        self.path = Path(path)
        self.what = what
        self._lock = threading.RLock()
        self._conn = open_database(self.path, what=what, schema=schema)
        self._closed = False

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one ``BEGIN IMMEDIATE`` transaction, committed unless
        an error escapes; SQLite's disk errors become ``StorageError``s."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.what} is closed")
            db = self._conn
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as error:
                known = storage_error(error, f"{self.what} {self.path}")
                if known is None:
                    raise
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise known from error

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, under the lock."""
        with self._lock:
            yield self._conn

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def merge_old_file(db: Database, old: Path, tables: tuple[str, ...]) -> None:
    """Copy ``tables`` of the SQLite file ``old`` into ``db`` (rows already there are
    kept), then rename it ``<name>.merged``. Nothing happens if ``old`` does not exist.

    The old file is checked first: a damaged one stops the start with one line
    (:class:`~mlsharp.errors.CorruptDatabase`) instead of losing what it held.
    """
    if not old.is_file():
        return
    open_database(old, what="the webhook database of an earlier version", schema="").close()
    with db.read() as conn:
        conn.execute("ATTACH DATABASE ? AS old", (str(old),))
        try:
            existing = {
                row[0]
                for row in conn.execute("SELECT name FROM old.sqlite_master WHERE type='table'")
            }
            with db.write() as tx:
                for table in tables:
                    if table in existing:
                        tx.execute(f"INSERT OR IGNORE INTO main.{table} SELECT * FROM old.{table}")
        finally:
            conn.execute("DETACH DATABASE old")
    old.rename(old.with_name(old.name + ".merged"))
    for suffix in ("-wal", "-shm"):
        Path(f"{old}{suffix}").unlink(missing_ok=True)
    log.info("moved the webhooks of %s into %s", old, db.path)
