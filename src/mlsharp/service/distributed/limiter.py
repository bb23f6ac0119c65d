"""``RedisTokenBucket``: the per-client rate limit shared by every API instance.

The same token bucket as :class:`~mlsharp.service.auth.TokenBucketLimiter` (``30/minute``:
bursts of 30, one token back every two seconds), kept in one Redis hash per client and
updated by one Lua script, so concurrent requests on different instances cannot both take
the last token. Time comes from the Redis server's clock, so instances with skewed clocks
still agree.
"""

from __future__ import annotations

import math
from typing import Any

from mlsharp.errors import RateLimited
from mlsharp.service.distributed.redis_conn import guarded

# KEYS[1] bucket; ARGV capacity, refill per second. Returns {allowed, seconds to wait}.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring((1 - tokens) / rate)}
"""


class RedisTokenBucket:
    """A :class:`~mlsharp.service.auth.RateLimiter` in Redis (see the module docstring)."""

    def __init__(self, client: Any, namespace: str, requests: int, per_seconds: float) -> None:
        self.capacity = float(requests)
        self.refill_per_second = requests / per_seconds
        self.prefix = f"{namespace}:rate:"
        self._take = client.register_script(_TAKE)

    @guarded
    def check(self, client: str) -> None:
        """Take one token for ``client`` or raise :class:`RateLimited` with ``retry_after``."""
        allowed, wait = self._take(
            keys=[self.prefix + client], args=[self.capacity, self.refill_per_second]
        )
        if not int(allowed):
            raise RateLimited(
                "too many requests; retry later", retry_after=float(math.ceil(float(wait)))
            )
