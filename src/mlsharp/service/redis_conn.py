"""Redis clients for the scale-out mode, and what happens when Redis is away.

API requests that need Redis while it is unreachable fail fast with
:class:`~mlsharp.errors.ServiceUnavailable` (HTTP 503 with ``Retry-After``) instead of a
500 or a hang: :func:`guard` turns connection errors into it. Workers instead wait
(:func:`wait_for_redis`), retrying with capped exponential backoff and saying so in the
log, so a Redis restart never turns into a crash loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mlsharp.errors import ConfigError, ServiceUnavailable
from mlsharp.service.optional import require

log = logging.getLogger("mlsharp.distributed")

#: Seconds a client is told to wait (``Retry-After``) while Redis is unreachable.
RETRY_AFTER_SECONDS = 5.0

F = TypeVar("F", bound=Callable[..., Any])


def connect(url: str) -> Any:
    """A Redis client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); no I/O yet.

    Timeouts are short so an unreachable server gives a quick 503 rather than a stuck
    request; the library's own command retries are off (callers decide what to retry).
    """
    redis = require("redis")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"invalid queue URL {url!r}: use redis://HOST:PORT/DB")
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
            health_check_interval=15,
            retry_on_timeout=False,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        )
    except ValueError as error:
        raise ConfigError(f"invalid queue URL {url!r}: {error}") from None


def connection_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "Redis cannot be reached right now"."""
    redis = require("redis")
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn Redis connection errors into :class:`ServiceUnavailable` (HTTP 503)."""
    try:
        yield
    except connection_errors() as error:
        log.warning("redis unavailable: %s", error)
        raise ServiceUnavailable(
            "the job store (Redis) cannot be reached; retry later",
            retry_after=RETRY_AFTER_SECONDS,
        ) from None


def guarded(method: F) -> F:
    """Decorator form of :func:`guard` for store methods."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with guard():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def backoff_delays(first: float = 0.5, cap: float = 30.0) -> Iterator[float]:
    """0.5, 1, 2, 4 ... seconds, capped at ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * 2)


def wait_for_redis(
    client: Any,
    url: str,
    *,
    stop: threading.Event | None = None,
    first: float = 0.5,
    cap: float = 30.0,
) -> bool:
    """Block until Redis answers ``PING`` (True) or ``stop`` is set (False).

    Logs each failure with the next delay, so an operator sees why the worker idles.
    """
    stop = stop or threading.Event()
    errors = connection_errors()
    for attempt, delay in enumerate(backoff_delays(first, cap), start=1):
        try:
            client.ping()
        except errors as error:
            log.warning(
                "redis at %s unavailable (%s); retry %d in %.1fs",
                redact(url),
                error,
                attempt,
                delay,
            )
            if stop.wait(delay):
                return False
            continue
        if attempt > 1:
            log.info("redis at %s reachable again", redact(url))
        return True
    return False  # unreachable: the generator is endless


def call_with_retry(
    fn: Callable[[], Any], *, what: str, stop: threading.Event | None = None, give_up: float = 600
) -> Any:
    """Run ``fn`` retrying Redis connection errors with backoff for up to ``give_up`` seconds.

    Workers use it for the state transitions that must not be lost when Redis blips while a
    job finishes (the transition itself is idempotent: fenced by the lease token).
    """
    errors: tuple[type[BaseException], ...] = (*connection_errors(), ServiceUnavailable)
    deadline = time.monotonic() + give_up
    for delay in backoff_delays():
        try:
            return fn()
        except errors as error:
            if time.monotonic() + delay > deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("redis unavailable while %s (%s); retrying in %.1fs", what, error, delay)
            time.sleep(delay)
    return None


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    import re

    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)
