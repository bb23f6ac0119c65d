"""``RedisResultCache``: one result cache for every worker and API instance.

The same contract as the embedded :class:`~mlsharp.service.cache.ResultCache`
(content-addressed keys from :func:`~mlsharp.service.cache.cache_key`, LRU by bytes, files
returned as local paths to link or copy promptly), with the index in Redis::

    ns:cache:entry:<key>   hash format -> size in bytes
    ns:cache:lru           sorted set key -> last use (ms)
    ns:cache:bytes         total size of the entries
    ns:cache:hits/misses   lookup counters
    ns:cache:models        model ids workers run now (sorted by when that stops being true)

and the files in the shared :mod:`~mlsharp.service.distributed.blobs` (the data directory
or the S3 bucket) as ``<key>/result.<format>``. Cache keys include the model id
(checkpoint digest, preset, runtime options), which only a loaded model knows: workers
announce theirs (:meth:`RedisResultCache.announce_model`) so API-only instances can look
a photo up at submission (:meth:`RedisResultCache.model_ids`).

Eviction removes an entry from the index with one script (only the caller whose script
removed it deletes the files), so two instances evicting at once never double-count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlsharp.service.cache import CacheStats, _check_format, _check_key
from mlsharp.service.distributed.blobs import Blobs
from mlsharp.service.distributed.redis_conn import connection_errors, guarded

log = logging.getLogger("mlsharp.distributed")

# Remove entry KEYS[1] from the LRU KEYS[2] and the total KEYS[3]; its size or -1.
_DROP = """
if redis.call('zrem', KEYS[2], ARGV[1]) == 0 then return -1 end
local size = 0
for _, v in ipairs(redis.call('hvals', KEYS[1])) do size = size + tonumber(v) end
redis.call('del', KEYS[1])
redis.call('decrby', KEYS[3], size)
return size
"""


class RedisResultCache:
    """The scale-out result cache (see the module docstring)."""

    def __init__(
        self, client: Any, namespace: str, blobs: Blobs, *, max_bytes: int, enabled: bool = True
    ) -> None:
        self.client = client
        self.ns = f"{namespace}:cache"
        self.blobs = blobs
        self.max_bytes = int(max_bytes)
        self.enabled = enabled
        self._drop_script = client.register_script(_DROP)

    def _entry(self, key: str) -> str:
        return f"{self.ns}:entry:{key}"

    def announce_model(self, model_id: str, ttl: float) -> None:
        """Say that a worker runs ``model_id``, for the next ``ttl`` seconds."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(f"{self.ns}:models", {model_id: now + ttl})
        pipe.zremrangebyscore(f"{self.ns}:models", "-inf", now)
        pipe.execute()

    def model_ids(self) -> list[str]:
        """The model ids workers announced and still run, newest first ([] without
        Redis: the submission then skips the cache, the worker looks instead)."""
        try:
            found = self.client.zrevrangebyscore(f"{self.ns}:models", "+inf", time.time())
        except connection_errors():
            return []
        return [m.decode() for m in found]

    def get(self, key: str, formats: Sequence[str]) -> dict[str, Path] | None:
        """``{format: local path}`` of an entry holding every format, else ``None``.

        With Redis unreachable this is a miss (the job is computed instead).
        """
        if not self.enabled:
            return None
        try:
            return self._get(key, formats)
        except connection_errors() as error:
            log.warning("result cache unavailable (%s): treated as a miss", error)
            return None

    def _get(self, key: str, formats: Sequence[str]) -> dict[str, Path] | None:
        _check_key(key)
        wanted = [_check_format(f) for f in formats]
        stored = {f.decode() for f in self.client.hkeys(self._entry(key))}
        paths: dict[str, Path] | None = None
        if stored and stored.issuperset(wanted):
            found = {f: self.blobs.local_path(f"{key}/result.{f}") for f in wanted}
            if all(found.values()):
                paths = {f: p for f, p in found.items() if p is not None}
            else:  # files vanished: forget the entry
                self._drop(key)
        self.client.incr(f"{self.ns}:{'misses' if paths is None else 'hits'}")
        if paths is not None:
            self.client.zadd(f"{self.ns}:lru", {key: time.time() * 1000}, xx=True)
        return paths

    def put(self, key: str, files: Mapping[str, Path]) -> None:
        """Store finished files under ``key``, then evict least recently used entries.

        With Redis unreachable nothing is stored (a cache may always forget).
        """
        if not self.enabled or self.max_bytes == 0 or not files:
            return
        try:
            self._put(key, files)
        except connection_errors() as error:
            log.warning("result cache unavailable (%s): result not cached", error)

    def _put(self, key: str, files: Mapping[str, Path]) -> None:
        _check_key(key)
        sizes = {_check_format(f): Path(p).stat().st_size for f, p in files.items()}
        if sum(sizes.values()) > self.max_bytes:
            return
        for fmt, path in files.items():
            self.blobs.put_file(f"{key}/result.{fmt}", Path(path))
        entry = self._entry(key)

        def tx(pipe: Any) -> None:
            old = {f.decode(): int(s) for f, s in pipe.hgetall(entry).items()}
            delta = sum(size - old.get(fmt, 0) for fmt, size in sizes.items())
            pipe.multi()
            pipe.hset(entry, mapping=sizes)
            pipe.zadd(f"{self.ns}:lru", {key: time.time() * 1000})
            pipe.incrby(f"{self.ns}:bytes", delta)

        self.client.transaction(tx, entry)
        self._evict(keep=key)

    def _evict(self, keep: str) -> None:
        while int(self.client.get(f"{self.ns}:bytes") or 0) > self.max_bytes:
            oldest = [k.decode() for k in self.client.zrange(f"{self.ns}:lru", 0, 1)]
            victims = [k for k in oldest if k != keep]
            if not victims:
                return
            self._drop(victims[0])

    def _drop(self, key: str) -> int:
        size = int(
            self._drop_script(
                keys=[self._entry(key), f"{self.ns}:lru", f"{self.ns}:bytes"], args=[key]
            )
        )
        if size >= 0:
            self.blobs.delete_prefix(key)
        return max(0, size)

    @guarded
    def stats(self) -> CacheStats:
        """Entries, bytes and lookup counters over the whole cluster."""
        if not self.enabled:
            return CacheStats(False, 0, 0, self.max_bytes, 0, 0, 0.0)
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"{self.ns}:lru")
        pipe.get(f"{self.ns}:bytes")
        pipe.get(f"{self.ns}:hits")
        pipe.get(f"{self.ns}:misses")
        entries, total, hits, misses = pipe.execute()
        hits, misses = int(hits or 0), int(misses or 0)
        rate = hits / (hits + misses) if hits + misses else 0.0
        return CacheStats(True, int(entries), int(total or 0), self.max_bytes, hits, misses, rate)

    @guarded
    def clear(self) -> int:
        """Remove every entry and reset the counters; returns the bytes freed."""
        if not self.enabled:
            return 0
        freed = 0
        for key in [k.decode() for k in self.client.zrange(f"{self.ns}:lru", 0, -1)]:
            freed += self._drop(key)
        self.client.delete(f"{self.ns}:hits", f"{self.ns}:misses")
        return freed

    def close(self) -> None:
        """Nothing to release (the Redis client belongs to the state)."""
