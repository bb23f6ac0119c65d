"""``CacheIndex``: the storage primitives the result cache's policy is written over.

The index knows which entries exist, their files' sizes, the order of last use and the
lookup counters; the files themselves are :class:`~mlsharp.service.files.ports.Blobs`.
Each primitive is atomic on its own (one SQLite transaction, one Redis transaction or
script); :mod:`~mlsharp.service.cache.policy` composes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

Outcome = Literal["hits", "misses"]


class CacheIndex(Protocol):
    """Entries, sizes, LRU order and counters (SQLite: ``sqlite.py``; Redis: ``redis.py``)."""

    def formats(self, key: str) -> dict[str, int]:
        """The formats entry ``key`` holds, with their sizes (empty: no such entry)."""
        ...

    def record(self, key: str, sizes: Mapping[str, int]) -> None:
        """Merge ``sizes`` into entry ``key`` (a format there is replaced) and make it the
        most recently used."""
        ...

    def touch(self, key: str) -> None:
        """Make entry ``key`` the most recently used (if it exists)."""
        ...

    def count(self, outcome: Outcome) -> None:
        """Count one lookup."""
        ...

    def total_bytes(self) -> int:
        """The size of every entry together."""
        ...

    def oldest(self, keep: str | None) -> str | None:
        """The least recently used entry other than ``keep``, or ``None``."""
        ...

    def remove(self, key: str) -> int | None:
        """Forget entry ``key``; its size, or ``None`` if it was not there (another
        process removed it first: that one deletes the files)."""
        ...

    def entries(self) -> dict[str, dict[str, int]]:
        """Every entry with its formats and sizes."""
        ...

    def stats(self) -> tuple[int, int, int, int]:
        """``(entries, bytes, hits, misses)``."""
        ...

    def reset_counters(self) -> None:
        """Set the hit and miss counters back to zero."""
        ...

    def announce_model(self, model_id: str, ttl: float) -> None:
        """Say that this process runs ``model_id`` for the next ``ttl`` seconds (so API
        instances without a model can look results up); nothing to do when one process
        both accepts and runs jobs."""
        ...

    def model_ids(self) -> list[str]:
        """The model ids announced and still running, newest first."""
        ...

    def close(self) -> None:
        """Release what the index holds open."""
        ...
