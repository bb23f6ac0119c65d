"""The rate limit's ports: what routes call, and the one primitive a store provides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RateLimiter(Protocol):
    """Admits or refuses one request of a client."""

    def check(self, client: str, *, take: bool = True) -> None:
        """Take one token for ``client`` or raise :class:`~mlsharp.errors.RateLimited`;
        with ``take=False`` only ask, taking nothing."""
        ...


@dataclass(frozen=True)
class Bucket:
    """A client's bucket: ``tokens`` left at time ``at`` (the store's clock, seconds)."""

    tokens: float
    at: float


class BucketStore(Protocol):
    """Buckets by client key, each changed atomically."""

    def update(
        self, key: str, change: Callable[[Bucket | None, float], Bucket], ttl_seconds: float
    ) -> Bucket:
        """Replace the bucket of ``key`` by ``change(old or None, now)`` atomically and
        return it; ``now`` is the store's clock. A bucket untouched for ``ttl_seconds``
        may be forgotten (it is full again by then). ``change`` may be called more than
        once (an optimistic store retries); only its last result is kept."""
        ...
