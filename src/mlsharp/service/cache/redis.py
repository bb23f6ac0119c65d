"""``RedisCacheIndex``: one result cache index for every worker and API instance.

Keys (``ns`` is ``<queue_namespace>:cache``)::

    ns:entry:<key>   hash format -> size in bytes
    ns:lru           sorted set key -> last use (ms)
    ns:bytes         total size of the entries
    ns:hits/misses   lookup counters
    ns:models        model ids workers run now (scored by when that stops being true)

The files are in the shared blobs (the data directory or the S3 bucket). Cache keys
include the model id (checkpoint digest, preset, runtime options), which only a loaded
model knows: workers announce theirs so API-only instances can look a photo up at
submission. An entry is removed by one script, so of two instances evicting it at once
only one gets its size (and deletes its files). Connection errors are
:class:`~mlsharp.errors.ServiceUnavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from mlsharp.service.cache.ports import Outcome
from mlsharp.service.redis_conn import guarded

# Remove entry KEYS[1] from the LRU KEYS[2] and the total KEYS[3]; its size or -1.
_REMOVE = """
if redis.call('zrem', KEYS[2], ARGV[1]) == 0 then return -1 end
local size = 0
for _, v in ipairs(redis.call('hvals', KEYS[1])) do size = size + tonumber(v) end
redis.call('del', KEYS[1])
redis.call('decrby', KEYS[3], size)
return size
"""


class RedisCacheIndex:
    """The index under ``<namespace>:cache`` (see the module docstring)."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.ns = f"{namespace}:cache"
        self._remove = client.register_script(_REMOVE)

    def _entry(self, key: str) -> str:
        return f"{self.ns}:entry:{key}"

    @guarded
    def formats(self, key: str) -> dict[str, int]:
        """The formats of entry ``key`` with their sizes."""
        stored = self.client.hgetall(self._entry(key))
        return {fmt.decode(): int(size) for fmt, size in stored.items()}

    @guarded
    def record(self, key: str, sizes: Mapping[str, int]) -> None:
        """Merge ``sizes`` into entry ``key`` as the most recently used (under WATCH)."""
        entry = self._entry(key)

        def tx(pipe: Any) -> None:
            old = {f.decode(): int(s) for f, s in pipe.hgetall(entry).items()}
            delta = sum(size - old.get(fmt, 0) for fmt, size in sizes.items())
            pipe.multi()
            pipe.hset(entry, mapping=dict(sizes))
            pipe.zadd(f"{self.ns}:lru", {key: time.time() * 1000})
            pipe.incrby(f"{self.ns}:bytes", delta)

        self.client.transaction(tx, entry)

    @guarded
    def touch(self, key: str) -> None:
        """Make entry ``key`` the most recently used (if it is still there)."""
        self.client.zadd(f"{self.ns}:lru", {key: time.time() * 1000}, xx=True)

    @guarded
    def count(self, outcome: Outcome) -> None:
        """Count one lookup."""
        self.client.incr(f"{self.ns}:{outcome}")

    @guarded
    def total_bytes(self) -> int:
        """The size of every entry together."""
        return int(self.client.get(f"{self.ns}:bytes") or 0)

    @guarded
    def oldest(self, keep: str | None) -> str | None:
        """The least recently used entry other than ``keep``."""
        oldest = [k.decode() for k in self.client.zrange(f"{self.ns}:lru", 0, 1)]
        return next((k for k in oldest if k != keep), None)

    @guarded
    def remove(self, key: str) -> int | None:
        """Forget entry ``key``; its size, or ``None`` if another caller removed it."""
        keys = [self._entry(key), f"{self.ns}:lru", f"{self.ns}:bytes"]
        size = int(self._remove(keys=keys, args=[key]))
        return None if size < 0 else size

    @guarded
    def entries(self) -> dict[str, dict[str, int]]:
        """Every entry with its formats and sizes."""
        keys = [k.decode() for k in self.client.zrange(f"{self.ns}:lru", 0, -1)]
        return {key: self.formats(key) for key in keys}

    @guarded
    def stats(self) -> tuple[int, int, int, int]:
        """``(entries, bytes, hits, misses)`` over the whole cluster."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"{self.ns}:lru")
        pipe.get(f"{self.ns}:bytes")
        pipe.get(f"{self.ns}:hits")
        pipe.get(f"{self.ns}:misses")
        entries, total, hits, misses = pipe.execute()
        return int(entries), int(total or 0), int(hits or 0), int(misses or 0)

    @guarded
    def reset_counters(self) -> None:
        """Hits and misses back to zero."""
        self.client.delete(f"{self.ns}:hits", f"{self.ns}:misses")

    @guarded
    def announce_model(self, model_id: str, ttl: float) -> None:
        """Say that a worker runs ``model_id``, for the next ``ttl`` seconds."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(f"{self.ns}:models", {model_id: now + ttl})
        pipe.zremrangebyscore(f"{self.ns}:models", "-inf", now)
        pipe.execute()

    @guarded
    def model_ids(self) -> list[str]:
        """The model ids workers announced and still run, newest first."""
        found = self.client.zrevrangebyscore(f"{self.ns}:models", "+inf", time.time())
        return [m.decode() for m in found]

    def close(self) -> None:
        """Nothing to release (the Redis client belongs to the composition root)."""
