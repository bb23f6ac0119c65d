"""``SQLiteCacheIndex``: the embedded result cache's index, and :func:`local_cache`.

Layout of a local cache (one process owns a root at a time)::

    <root>/index.sqlite3                        this index (WAL)
    <root>/entries/<key[:2]>/<key>/result.<f>   the files (LocalBlobs)
    <root>/staging/                             files on their way in

One row per cached file (``entries``); an entry is the rows sharing a key. ``last_used``
is in nanoseconds, forced strictly increasing so the LRU order is exact. The counters
live in ``cache_meta``: a new cache on the same root carries on where the last stopped.
A damaged index is set aside (``index.sqlite3.corrupt-<time>``) and started anew; the
sweep at open then deletes the files nothing indexes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from mlsharp.errors import CorruptDatabase
from mlsharp.service.cache.policy import ResultCache
from mlsharp.service.cache.ports import Outcome
from mlsharp.service.database import Database
from mlsharp.service.files.local import LocalBlobs

log = logging.getLogger("mlsharp.service")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT NOT NULL,
    format TEXT NOT NULL,
    size INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    PRIMARY KEY (key, format)
);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used);
CREATE TABLE IF NOT EXISTS cache_meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO cache_meta (name, value) VALUES ('hits', 0), ('misses', 0);
"""


def local_cache(root: Path, *, max_bytes: int, enabled: bool = True) -> ResultCache:
    """The embedded result cache under ``root``: opened, swept, within ``max_bytes``.

    Disabled, it touches nothing on disk.
    """
    if not enabled:
        return ResultCache(None, None, max_bytes=max_bytes)
    root = Path(root)
    blobs = LocalBlobs(root / "entries", staging=root / "staging")
    cache = ResultCache(SQLiteCacheIndex(root / "index.sqlite3"), blobs, max_bytes=max_bytes)
    cache.sweep()
    cache.evict()  # a smaller limit than last time applies at once
    return cache


class SQLiteCacheIndex:
    """The index in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = self._open(self.path)

    @staticmethod
    def _open(path: Path) -> Database:
        what = "the result cache index"
        try:
            return Database(path, what=what, schema=SCHEMA)
        except CorruptDatabase as error:
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            log.warning("%s; starting an empty cache (the old index is kept as %s)", error, aside)
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return Database(path, what=what, schema=SCHEMA)

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction under the lock; SQLite errors become ``StorageError``."""
        return self._db.write()

    def formats(self, key: str) -> dict[str, int]:
        """The formats of entry ``key`` with their sizes."""
        with self._tx() as db:
            rows = db.execute("SELECT format, size FROM entries WHERE key = ?", (key,))
            return {fmt: int(size) for fmt, size in rows}

    def record(self, key: str, sizes: Mapping[str, int]) -> None:
        """Merge ``sizes`` into entry ``key`` as the most recently used."""
        with self._tx() as db:
            now = _tick(db)
            db.executemany(
                "INSERT OR REPLACE INTO entries (key, format, size, last_used) VALUES (?, ?, ?, ?)",
                [(key, fmt, size, now) for fmt, size in sizes.items()],
            )
            db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (now, key))

    def touch(self, key: str) -> None:
        """Make entry ``key`` the most recently used."""
        with self._tx() as db:
            db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (_tick(db), key))

    def count(self, outcome: Outcome) -> None:
        """Count one lookup."""
        with self._tx() as db:
            db.execute("UPDATE cache_meta SET value = value + 1 WHERE name = ?", (outcome,))

    def total_bytes(self) -> int:
        """The size of every entry together."""
        with self._tx() as db:
            return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    def oldest(self, keep: str | None) -> str | None:
        """The least recently used entry other than ``keep``."""
        with self._tx() as db:
            row = db.execute(
                "SELECT key FROM entries WHERE key != ? ORDER BY last_used LIMIT 1", (keep or "",)
            ).fetchone()
        return None if row is None else str(row[0])

    def remove(self, key: str) -> int | None:
        """Forget entry ``key``; its size, or ``None`` if it was not there."""
        with self._tx() as db:
            size = db.execute(
                "SELECT COALESCE(SUM(size), 0), count(*) FROM entries WHERE key = ?", (key,)
            ).fetchone()
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
        return int(size[0]) if size[1] else None

    def entries(self) -> dict[str, dict[str, int]]:
        """Every entry with its formats and sizes."""
        found: dict[str, dict[str, int]] = {}
        with self._tx() as db:
            for key, fmt, size in db.execute("SELECT key, format, size FROM entries"):
                found.setdefault(key, {})[fmt] = int(size)
        return found

    def stats(self) -> tuple[int, int, int, int]:
        """``(entries, bytes, hits, misses)``."""
        with self._tx() as db:
            entries, total = db.execute(
                "SELECT COUNT(DISTINCT key), COALESCE(SUM(size), 0) FROM entries"
            ).fetchone()
            counters = dict(db.execute("SELECT name, value FROM cache_meta").fetchall())
        return int(entries), int(total), int(counters["hits"]), int(counters["misses"])

    def reset_counters(self) -> None:
        """Hits and misses back to zero."""
        with self._tx() as db:
            db.execute("UPDATE cache_meta SET value = 0 WHERE name IN ('hits', 'misses')")

    def announce_model(self, model_id: str, ttl: float) -> None:
        """Nothing to do: the embedded service looks up with its own model."""

    def model_ids(self) -> list[str]:
        """None announced: the embedded service looks up with its own model."""
        return []

    def close(self) -> None:
        """Close the index. Safe to call twice."""
        self._db.close()


def _tick(db: sqlite3.Connection) -> int:
    """Current time in nanoseconds, strictly after every recorded ``last_used``."""
    latest = db.execute("SELECT COALESCE(MAX(last_used), 0) FROM entries").fetchone()[0]
    return max(time.time_ns(), latest + 1)
