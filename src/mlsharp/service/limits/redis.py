"""``RedisBuckets``: buckets shared by every API instance, in Redis.

One hash per client (``<ns>:<kind>:<client>``: ``tokens``, ``at``; the kind is ``rate``
for the request rate, ``auth-failures`` for wrong API keys per address), changed in an
optimistic transaction (``WATCH``, then ``MULTI``/``EXEC``; a concurrent change retries),
so concurrent requests on different instances cannot both take the last token. Time comes
from the Redis server's clock (``TIME``), so instances with skewed clocks still agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from mlsharp.service.limits.ports import Bucket
from mlsharp.service.redis_conn import guarded


class RedisBuckets:
    """Buckets under ``<namespace>:<kind>:`` (see the module docstring)."""

    def __init__(self, client: Any, namespace: str, kind: str = "rate") -> None:
        self.client = client
        self.prefix = f"{namespace}:{kind}:"

    @guarded
    def update(
        self, key: str, change: Callable[[Bucket | None, float], Bucket], ttl_seconds: float
    ) -> Bucket:
        """Apply ``change`` to the bucket of ``key`` atomically (retried on a conflict)."""
        name = self.prefix + key
        result: list[Bucket] = []

        def tx(pipe: Any) -> None:
            seconds, micros = pipe.time()
            tokens, at = pipe.hmget(name, "tokens", "at")
            old = None if tokens is None or at is None else Bucket(float(tokens), float(at))
            bucket = change(old, seconds + micros / 1e6)
            pipe.multi()
            pipe.hset(name, mapping={"tokens": repr(bucket.tokens), "at": repr(bucket.at)})
            pipe.pexpire(name, math.ceil(ttl_seconds * 1000))
            result[:] = [bucket]

        self.client.transaction(tx, name)
        return result[0]
