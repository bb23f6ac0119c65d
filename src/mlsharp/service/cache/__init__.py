"""The result cache: finished files reused for identical inputs, LRU by bytes.

keys.py     cache_key (content addressed) and the names of cached files
ports.py    CacheIndex: the storage primitives
policy.py   ResultCache: lookups, stores, eviction, sweep (once, for every backend)
sqlite.py   SQLiteCacheIndex + local_cache(): the embedded cache
redis.py    RedisCacheIndex: shared by a scale-out cluster
"""

from mlsharp.service.cache.keys import cache_key
from mlsharp.service.cache.policy import CacheStats, ResultCache

__all__ = ["CacheStats", "ResultCache", "cache_key"]
