"""API keys and per-client rate limiting.

Keys come from the settings (``MLSHARP_API_KEYS``) and are kept only as SHA-256 digests;
clients send ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. With no keys configured
the service is open. A missing key is ``401``, a wrong one ``403``.

The rate limit is a token bucket per client (the key's short digest, or the client address
when the service is open): ``30/minute`` allows bursts of 30 and refills one token every two
seconds. ``RateLimiter`` is the interface; ``TokenBucketLimiter`` the in-process default.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from mlsharp.errors import Forbidden, RateLimited, Unauthorized


def key_digest(key: str) -> str:
    """The SHA-256 hex digest under which an API key is kept."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The accepted API keys, stored hashed; ``identify`` checks a request's headers."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(key_digest(k) for k in keys if k)

    @property
    def required(self) -> bool:
        """True when at least one key is configured."""
        return bool(self._digests)

    @staticmethod
    def presented(headers: Mapping[str, str]) -> str | None:
        """The key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``."""
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        key = headers.get("x-api-key", "").strip()
        return key or None

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """The caller's identity (a short key digest), or ``None`` when keys are not required.

        Raises :class:`Unauthorized` without a key and :class:`Forbidden` with a wrong one.
        """
        if not self.required:
            return None
        key = self.presented(headers)
        if key is None:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
        digest = key_digest(key)
        # Compare against every key in constant time so timing tells nothing.
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        if not any(matches):
            raise Forbidden("the API key is not valid")
        return digest[:16]


class RateLimiter(Protocol):
    """Admits or refuses one request of a client."""

    def check(self, client: str) -> None: ...


class TokenBucketLimiter:
    """An in-process token bucket per client; ``check`` raises :class:`RateLimited`."""

    def __init__(self, requests: int, per_seconds: float, *, clock=time.monotonic) -> None:
        self.capacity = float(requests)
        self.refill_per_second = requests / per_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def check(self, client: str) -> None:
        """Take one token for ``client`` or raise :class:`RateLimited` with ``retry_after``."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.refill_per_second)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.refill_per_second
                raise RateLimited(
                    "too many requests; retry later", retry_after=float(math.ceil(wait))
                )
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:  # forget idle clients so memory stays bounded
                self._forget_full(now)

    def _forget_full(self, now: float) -> None:
        full_after = self.capacity / self.refill_per_second
        self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < full_after}
