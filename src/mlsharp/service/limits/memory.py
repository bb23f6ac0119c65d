"""``MemoryBuckets``: the embedded :class:`~mlsharp.service.limits.ports.BucketStore`,
one dict under a lock (one process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mlsharp.service.limits.ports import Bucket

#: Buckets kept before idle ones are forgotten, so memory stays bounded.
_MAX_BUCKETS = 100_000


class MemoryBuckets:
    """Buckets in this process; ``clock`` (seconds, monotonic) is replaceable in tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}

    def update(
        self, key: str, change: Callable[[Bucket | None, float], Bucket], ttl_seconds: float
    ) -> Bucket:
        """Apply ``change`` to the bucket of ``key`` under the lock."""
        now = self._clock()
        with self._lock:
            bucket = change(self._buckets.get(key), now)
            self._buckets[key] = bucket
            if len(self._buckets) > _MAX_BUCKETS:
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.at < ttl_seconds}
        return bucket
