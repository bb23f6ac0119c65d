"""``ResultCache``: finished result files, bounded by bytes, least recently used first out.

The policy, written once over a :class:`~mlsharp.service.cache.ports.CacheIndex` and a
:class:`~mlsharp.service.files.ports.Blobs`:

* **Lookups** hit only when the entry holds every asked format and its files are still
  there (an entry whose files vanished is dropped). A hit makes the entry the most
  recently used. Hits and misses are counted.
* **Stores** put the files first (each atomically), then record them: an entry is in the
  index only once its files are complete. An entry larger than ``max_bytes`` is not kept;
  then least recently used entries are evicted until the total fits. Eviction removes an
  entry from the index first and only the process whose removal succeeded deletes the
  files, so concurrent evictions never count an entry twice.
* **Never in the way**: a cached file is never modified (a new version is a new file
  renamed over the old name), so a caller that hard-linked one keeps it intact; and a
  cache that cannot be read or written (a full disk, Redis away) is a miss, never an
  error: a cache may always forget.
* :meth:`ResultCache.sweep` (at start-up, for a cache this process owns) deletes files the
  index does not know (leftovers of an interrupted store) and forgets entries whose files
  vanished.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlsharp.errors import ServiceUnavailable, StorageError
from mlsharp.service.cache.keys import (
    blob_name,
    check_format,
    check_key,
    entry_folder,
    parse_blob_name,
)
from mlsharp.service.cache.ports import CacheIndex
from mlsharp.service.files.ports import Blobs

log = logging.getLogger("mlsharp.service")

#: What a cache that cannot be used right now raises; it is then a miss.
_UNAVAILABLE = (ServiceUnavailable, StorageError, OSError)


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


class ResultCache:
    """Content-addressed, size-bounded, LRU cache of result files (see the module docs).

    ``index`` and ``blobs`` ``None``: the cache is disabled (lookups miss without being
    counted, stores are ignored, nothing is touched).
    """

    def __init__(self, index: CacheIndex | None, blobs: Blobs | None, *, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.index = index
        self.blobs = blobs
        self.max_bytes = int(max_bytes)

    @property
    def enabled(self) -> bool:
        """Whether results are cached at all."""
        return self.index is not None and self.blobs is not None

    def get(self, key: str, formats: Sequence[str]) -> dict[str, Path] | None:
        """``{format: path}`` of an entry holding every asked format, else ``None``.

        The paths are local files: link or copy them promptly (a later store may evict
        them) and never write to them.
        """
        if self.index is None or self.blobs is None:
            return None
        check_key(key)
        wanted = [check_format(fmt) for fmt in formats]
        try:
            paths = self._lookup(self.index, self.blobs, key, wanted)
            self.index.count("misses" if paths is None else "hits")
        except _UNAVAILABLE as error:
            log.warning("result cache unavailable (%s): treated as a miss", error)
            return None
        return paths

    def _lookup(
        self, index: CacheIndex, blobs: Blobs, key: str, wanted: list[str]
    ) -> dict[str, Path] | None:
        stored = index.formats(key)
        if not stored or not set(stored).issuperset(wanted):
            return None
        found = {fmt: blobs.local_path(blob_name(key, fmt)) for fmt in wanted}
        paths = {fmt: path for fmt, path in found.items() if path is not None}
        if len(paths) < len(wanted):  # files vanished: forget the entry
            self._drop(key)
            return None
        index.touch(key)
        return paths

    def put(self, key: str, files: Mapping[str, Path]) -> None:
        """Store finished files (``{format: path}``) under ``key``, then evict to the limit.

        Formats merge into an existing entry. An entry that alone exceeds ``max_bytes``
        is not kept. The source files are left in place. A failure to store is logged,
        never raised.
        """
        if self.index is None or self.blobs is None or self.max_bytes == 0 or not files:
            return
        check_key(key)
        try:
            sizes = {check_format(fmt): Path(path).stat().st_size for fmt, path in files.items()}
            if sum(sizes.values()) > self.max_bytes:
                return
            for fmt, path in files.items():
                self.blobs.put_file(blob_name(key, fmt), Path(path))
            self.index.record(key, sizes)
            if sum(self.index.formats(key).values()) > self.max_bytes:
                self._drop(key)  # merged with what was there, it no longer fits
            self.evict(keep=key)
        except _UNAVAILABLE as error:
            log.warning("result not cached (%s)", error)

    def evict(self, keep: str | None = None) -> None:
        """Drop least recently used entries (never ``keep``) until the total fits."""
        if self.index is None:
            return
        while self.index.total_bytes() > self.max_bytes:
            victim = self.index.oldest(keep)
            if victim is None:
                return
            self._drop(victim)

    def _drop(self, key: str) -> int:
        """Forget an entry, then delete its files (if this call removed it); its size."""
        assert self.index is not None and self.blobs is not None
        size = self.index.remove(key)
        if size is not None:
            self.blobs.delete_prefix(entry_folder(key))
        return size or 0

    def stats(self) -> CacheStats:
        """Entries, bytes and lookup counters (over every process sharing the index)."""
        if self.index is None:
            return CacheStats(False, 0, 0, self.max_bytes, 0, 0, 0.0)
        entries, total, hits, misses = self.index.stats()
        rate = hits / (hits + misses) if hits + misses else 0.0
        return CacheStats(True, entries, total, self.max_bytes, hits, misses, rate)

    def clear(self) -> int:
        """Remove every entry and reset the counters; returns the bytes freed."""
        if self.index is None:
            return 0
        freed = sum(self._drop(key) for key in self.index.entries())
        self.index.reset_counters()
        return freed

    def sweep(self) -> None:
        """Delete files the index does not know; forget entries whose files vanished."""
        if self.index is None or self.blobs is None:
            return
        entries = self.index.entries()
        present: dict[str, set[str]] = {}
        for name in self.blobs.names():
            parsed = parse_blob_name(name)
            if parsed is None:
                self.blobs.delete(name)
            elif parsed[0] not in entries:
                self.blobs.delete_prefix(entry_folder(parsed[0]))
            elif parsed[1] is None or parsed[1] not in entries[parsed[0]]:
                self.blobs.delete(name)
            else:
                present.setdefault(parsed[0], set()).add(parsed[1])
        for key, formats in entries.items():
            if not present.get(key, set()).issuperset(formats):
                self._drop(key)

    def announce_model(self, model_id: str, ttl: float) -> None:
        """Tell API instances without a model which model's results this worker makes."""
        if self.index is not None:
            self.index.announce_model(model_id, ttl)

    def model_ids(self) -> list[str]:
        """Model ids workers announced (newest first); ``[]`` when unknown or unreachable."""
        if self.index is None:
            return []
        try:
            return self.index.model_ids()
        except _UNAVAILABLE:
            return []

    def close(self) -> None:
        """Release the index (the cache cannot be used afterwards)."""
        if self.index is not None:
            self.index.close()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
