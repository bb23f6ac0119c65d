"""``TokenBucketLimiter``: the token bucket, written once over a :class:`BucketStore`.

``30/minute`` allows bursts of 30 requests and gives one token back every two seconds.
A refused request takes nothing and is told how long to wait (``Retry-After``). A check
with ``take=False`` only asks whether a token is left (the throttle of wrong API keys
refuses an address whose failures emptied its bucket before looking at its next key, and
takes a token only when that key is wrong too).
"""

from __future__ import annotations

import math

from mlsharp.errors import RateLimited
from mlsharp.service.limits.ports import Bucket, BucketStore


class TokenBucketLimiter:
    """``requests`` per ``per_seconds`` for each client, over ``store``."""

    def __init__(self, store: BucketStore, requests: int, per_seconds: float) -> None:
        if requests < 1 or per_seconds <= 0:
            raise ValueError("a rate needs at least 1 request per a positive number of seconds")
        self.store = store
        self.capacity = float(requests)
        self.refill_per_second = requests / per_seconds

    def check(self, client: str, *, take: bool = True) -> None:
        """Take one token for ``client`` (with ``take=False`` only look, taking nothing) or
        raise :class:`RateLimited` with ``retry_after``."""
        outcome: dict[str, float] = {}

        def refill(old: Bucket | None, now: float) -> Bucket:
            tokens = self.capacity
            if old is not None:
                elapsed = max(0.0, now - old.at)
                tokens = min(self.capacity, old.tokens + elapsed * self.refill_per_second)
            allowed = tokens >= 1.0
            outcome["wait"] = 0.0 if allowed else (1.0 - tokens) / self.refill_per_second
            return Bucket(tokens - 1.0 if allowed and take else tokens, now)

        # A bucket is full again after capacity / rate seconds: no need to keep it longer.
        self.store.update(client, refill, ttl_seconds=self.capacity / self.refill_per_second + 1)
        if outcome["wait"] > 0:
            raise RateLimited(
                "too many requests; retry later", retry_after=float(math.ceil(outcome["wait"]))
            )
