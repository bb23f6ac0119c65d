"""On-disk cache of finished result files, keyed by everything that produced them.

Design:

* **Content addressed.** :func:`cache_key` hashes every input that determines a result:
  the pixels (dtype, shape and bytes), the focal length, the model and the export options.
  Equal inputs give equal keys, so a cached file is always a valid answer: entries are
  never invalidated, only evicted.
* **Layout.** ``root/index.sqlite3`` is the index. Entry ``key`` keeps one file per format
  at ``root/entries/<key[:2]>/<key>/result.<format>``. ``root/staging`` holds files on
  their way in.
* **Bounded, least recently used.** The index records each file's size and its entry's
  ``last_used`` stamp (nanoseconds, forced strictly increasing so the order is exact).
  After every :meth:`ResultCache.put`, least recently used entries are evicted until the
  total size is within ``max_bytes``.
* **Cheap inserts, no in-place writes.** Files enter the cache with :func:`link_or_copy`:
  a hard link when the source is on the same filesystem, else a copy. A cached file is
  never modified: a new version is a new file renamed over the old name, and eviction only
  unlinks the cache's own names (:func:`shutil.rmtree`). A caller that hard-linked a
  cached file into its own folder therefore keeps it intact. Producers must likewise never
  rewrite in place a file they have handed to the cache (atomic writers never do).
* **Crash safe.** A file is recorded in the index only once it is complete at its final
  path (staged, fsynced, renamed), and eviction removes files before rows. Opening a cache
  then only has to sweep: folders and files the index does not know are leftovers of an
  interrupted put and are deleted; rows whose files vanished are dropped.
* **Thread safe.** One SQLite connection (WAL) guarded by a :class:`threading.Lock`;
  every change to the index or under ``entries/`` is made while holding it. Staging, the
  slow part when a copy is needed, runs outside it.
* **Persistent.** Entries, sizes, LRU order and the hit/miss counters (table
  ``cache_meta``) all live in the index: a new :class:`ResultCache` on the same root
  carries on where the previous one stopped. One process owns a root at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlsharp._atomic import fsync_directory, temp_path_for

__all__ = ["CacheStats", "ResultCache", "cache_key", "link_or_copy"]

_KEY_VERSION = b"mlsharp-result-cache-v1"
_KEY_RE = re.compile(r"[0-9a-f]{2,128}")
_FORMAT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

# One row per cached file; an entry is the set of rows sharing a key (and a last_used).
_SCHEMA = """
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


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the cache: size, limit and lookup counters."""

    enabled: bool
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    hit_rate: float  # hits / (hits + misses), 0.0 when no lookups


def cache_key(
    pixels: np.ndarray,
    *,
    focal_px: float,
    model_id: str,
    options: Mapping[str, object] | None = None,
) -> str:
    """Return the cache key (hex SHA-256) of a result computed from these inputs.

    Hashed, each field length-prefixed and in a fixed order: a version tag, the pixel
    dtype and shape, the C-ordered pixel bytes, ``repr(float(focal_px))``, ``model_id`` and
    ``options`` as sorted-key JSON (``None`` counts as no options, like ``{}``). Options
    must be JSON serialisable.
    """
    array = np.asarray(pixels)
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    fields = (
        _KEY_VERSION,
        array.dtype.str.encode(),
        repr(tuple(int(n) for n in array.shape)).encode(),
        memoryview(data),
        repr(float(focal_px)).encode(),
        model_id.encode(),
        json.dumps(dict(options or {}), sort_keys=True).encode(),
    )
    digest = hashlib.sha256()
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link to ``src`` if possible, else a copy of it.

    ``dst`` appears atomically: the link or copy is made under a temporary name next to
    it, then renamed over it, so an existing ``dst`` is replaced, never rewritten. Parent
    folders are created. Nothing happens when ``dst`` already is ``src``.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and os.path.samefile(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem, or links unsupported
            shutil.copyfile(src, tmp)
            _fsync_file(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(dst.parent)


class ResultCache:
    """Content-addressed, size-bounded, LRU cache of result files (see the module docs).

    Args:
        root: Folder holding the index and the files; created if needed.
        max_bytes: Limit on the total size of the cached files; 0 keeps nothing.
        enabled: When false the cache never touches the disk: lookups miss without being
            counted and stores are ignored.
    """

    def __init__(self, root: Path, *, max_bytes: int, enabled: bool = True) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.enabled = enabled
        self._entries_root = self.root / "entries"
        self._staging_root = self.root / "staging"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if enabled:
            self._open()

    # -- public API ---------------------------------------------------------------------

    def get(self, key: str, formats: Sequence[str]) -> dict[str, Path] | None:
        """Return ``{format: path}`` of a cached entry holding every requested format.

        A hit marks the entry as most recently used. A miss (no entry, a format missing,
        or files that vanished, in which case the entry is dropped) returns ``None``. The
        paths are the cache's own files: link or copy them promptly (a later put may evict
        them) and never write to them.
        """
        if not self.enabled:
            return None
        _check_key(key)
        wanted = [_check_format(fmt) for fmt in formats]
        with self._transaction() as db:
            paths = self._lookup(db, key, wanted)
            _count(db, "misses" if paths is None else "hits")
            if paths is not None:
                db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (_tick(db), key))
        return paths

    def put(self, key: str, files: Mapping[str, Path]) -> None:
        """Store finished files (``{format: path}``) under ``key``, then evict to the limit.

        Formats merge into an existing entry (a format already there is replaced). The
        entry becomes the most recently used; if it alone exceeds ``max_bytes`` it is not
        kept at all. The source files are left in place.
        """
        if not self.enabled or self.max_bytes == 0 or not files:
            return
        _check_key(key)
        formats = [_check_format(fmt) for fmt in files]
        staging = Path(tempfile.mkdtemp(dir=self._staging_root))
        try:
            for fmt, src in files.items():
                link_or_copy(Path(src), staging / _file_name(fmt))
            with self._transaction() as db:
                self._install(db, key, formats, staging)
                self._evict(db, keep=key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def stats(self) -> CacheStats:
        """Return the number of entries, their total size and the lookup counters."""
        if not self.enabled:
            return CacheStats(False, 0, 0, self.max_bytes, 0, 0, 0.0)
        with self._transaction() as db:
            entries = db.execute("SELECT COUNT(DISTINCT key) FROM entries").fetchone()[0]
            total = _total_bytes(db)
            hits, misses = _counter(db, "hits"), _counter(db, "misses")
        lookups = hits + misses
        hit_rate = hits / lookups if lookups else 0.0
        return CacheStats(True, entries, total, self.max_bytes, hits, misses, hit_rate)

    def clear(self) -> int:
        """Remove every entry and reset the hit/miss counters; return the bytes freed."""
        if not self.enabled:
            return 0
        with self._transaction() as db:
            freed = _total_bytes(db)
            shutil.rmtree(self._entries_root, ignore_errors=True)
            self._entries_root.mkdir()
            db.execute("DELETE FROM entries")
            db.execute("UPDATE cache_meta SET value = 0 WHERE name IN ('hits', 'misses')")
        return freed

    def close(self) -> None:
        """Close the index; the cache cannot be used afterwards. Safe to call twice."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _open(self) -> None:
        """Create the folders and the index, then sweep leftovers and apply the limit."""
        self._entries_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._staging_root, ignore_errors=True)
        self._staging_root.mkdir()
        db = sqlite3.connect(self.root / "index.sqlite3", check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db
        with self._transaction() as db:
            self._sweep(db)
            self._evict(db, keep=None)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one SQLite transaction (committed unless an error escapes)."""
        with self._lock:
            if self._db is None:
                raise RuntimeError("the result cache is closed")
            with self._db:
                yield self._db

    def _entry_dir(self, key: str) -> Path:
        return self._entries_root / key[:2] / key

    def _lookup(
        self, db: sqlite3.Connection, key: str, wanted: list[str]
    ) -> dict[str, Path] | None:
        """Paths of the wanted formats of ``key``, or None; drops the entry if files vanished."""
        rows = db.execute("SELECT format FROM entries WHERE key = ?", (key,)).fetchall()
        stored = {fmt for (fmt,) in rows}
        if not stored or not stored.issuperset(wanted):
            return None
        entry = self._entry_dir(key)
        paths = {fmt: entry / _file_name(fmt) for fmt in wanted}
        if all(path.is_file() for path in paths.values()):
            return paths
        self._drop(db, key)
        return None

    def _install(self, db: sqlite3.Connection, key: str, formats: list[str], staging: Path) -> None:
        """Move staged files into the entry, then record them as most recently used."""
        entry = self._entry_dir(key)
        entry.mkdir(parents=True, exist_ok=True)
        sizes = {}
        for fmt in formats:
            name = _file_name(fmt)
            sizes[fmt] = (staging / name).stat().st_size
            os.replace(staging / name, entry / name)
        fsync_directory(entry)
        fsync_directory(entry.parent)
        now = _tick(db)
        db.executemany(
            "INSERT OR REPLACE INTO entries (key, format, size, last_used) VALUES (?, ?, ?, ?)",
            [(key, fmt, size, now) for fmt, size in sizes.items()],
        )
        db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (now, key))

    def _evict(self, db: sqlite3.Connection, keep: str | None) -> None:
        """Drop ``keep`` if it alone is too big, then the LRU others until within the limit."""
        if keep is not None and _entry_bytes(db, keep) > self.max_bytes:
            self._drop(db, keep)
        total = _total_bytes(db)
        while total > self.max_bytes:
            row = db.execute(
                "SELECT key FROM entries WHERE key != ? ORDER BY last_used LIMIT 1", (keep or "",)
            ).fetchone()
            if row is None:
                break
            total -= self._drop(db, row[0])

    def _drop(self, db: sqlite3.Connection, key: str) -> int:
        """Remove an entry's files, then its rows; return its size."""
        size = _entry_bytes(db, key)
        # Errors are ignored: whatever stays behind is unindexed and swept at the next open.
        shutil.rmtree(self._entry_dir(key), ignore_errors=True)
        db.execute("DELETE FROM entries WHERE key = ?", (key,))
        return size

    def _sweep(self, db: sqlite3.Connection) -> None:
        """Delete files the index does not know; drop rows whose files vanished."""
        recorded: dict[str, set[str]] = {}
        for key, fmt in db.execute("SELECT key, format FROM entries"):
            recorded.setdefault(key, set()).add(_file_name(fmt))
        for path in self._entries_root.glob("*/*"):
            names = recorded.get(path.name)
            if names is None or path != self._entry_dir(path.name) or not path.is_dir():
                _remove(path)
                continue
            for child in path.iterdir():
                if child.name not in names:
                    _remove(child)
        for key, names in recorded.items():
            entry = self._entry_dir(key)
            if not all((entry / name).is_file() for name in names):
                self._drop(db, key)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid cache key {key!r} (expected lowercase hex)")
    return key


def _check_format(fmt: str) -> str:
    if not isinstance(fmt, str) or not _FORMAT_RE.fullmatch(fmt):
        raise ValueError(f"invalid format name {fmt!r}")
    return fmt


def _file_name(fmt: str) -> str:
    return f"result.{fmt}"


def _tick(db: sqlite3.Connection) -> int:
    """Current time in nanoseconds, strictly after every recorded ``last_used``."""
    latest = db.execute("SELECT COALESCE(MAX(last_used), 0) FROM entries").fetchone()[0]
    return max(time.time_ns(), latest + 1)


def _total_bytes(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]


def _entry_bytes(db: sqlite3.Connection, key: str) -> int:
    query = "SELECT COALESCE(SUM(size), 0) FROM entries WHERE key = ?"
    return db.execute(query, (key,)).fetchone()[0]


def _counter(db: sqlite3.Connection, name: str) -> int:
    return db.execute("SELECT value FROM cache_meta WHERE name = ?", (name,)).fetchone()[0]


def _count(db: sqlite3.Connection, name: str) -> None:
    db.execute("UPDATE cache_meta SET value = value + 1 WHERE name = ?", (name,))


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    """Delete a file or a folder tree (a leftover found by the sweep)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
