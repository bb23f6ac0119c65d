"""The composition root: the one place that reads ``settings.queue`` and ``settings.storage``
and builds the adapters behind each concept's port.

=============  =========================================  ====================================
concept        embedded (no ``queue``)                     scale-out (``queue: redis://...``)
=============  =========================================  ====================================
jobs           SQLite ``jobs.sqlite3`` (also the queue)   Redis records + Dramatiq queue
webhooks       SQLite, same database as the jobs          Redis
files          local data directory                       local, or S3 (``storage: s3``)
cache          SQLite index + files under ``cache/``      Redis index + shared files (or S3)
limits         in-process token buckets                   Redis token buckets
               (requests per key; wrong keys per address)
=============  =========================================  ====================================

Everything else (routes, the runner, every policy) sees only the ports. Building does
no network I/O, so an API instance starts (and answers 503 with ``Retry-After`` on
routes that need Redis) while Redis is still down. Only this module imports a Redis or
S3 adapter (tests/test_layering.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlsharp.config import Settings, check_data_dir_apart
from mlsharp.service.auth import ApiKeys
from mlsharp.service.cache import ResultCache
from mlsharp.service.database import Database, merge_old_file
from mlsharp.service.events import ChangeNotifier
from mlsharp.service.health import WorkerHealth
from mlsharp.service.jobs.model import decode
from mlsharp.service.limits import BucketStore, RateLimiter, TokenBucketLimiter
from mlsharp.service.metrics import Metrics, StateProbe
from mlsharp.service.state import ServiceState
from mlsharp.service.views import job_event_data
from mlsharp.service.webhooks import WebhookService


def build_state(settings: Settings, metrics: Metrics | None = None) -> ServiceState:
    """The service's parts for ``settings`` (see the module docstring)."""
    from mlsharp.weights import cache_dir

    metrics = metrics or Metrics()
    check_data_dir_apart(Path(settings.data_dir), cache_dir())
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    state = _scale_out(settings, metrics) if settings.queue else _embedded(settings, metrics)
    metrics.attach(
        StateProbe(
            job_counts=state.store.counts,
            cache=lambda: cache_numbers(state.cache),
            device_memory=state.device_memory,
        )
    )
    return state


def runner_threads(settings: Settings) -> int:
    """Threads of the job runner. Embedded: jobs share a forward only when several run at
    once, so a batch size of N gets at least N threads (docs/runtime.md, batching).
    Scale-out: one per worker process and device, as asked."""
    if settings.queue or not settings.workers:
        return settings.workers
    return max(settings.workers, settings.batch_size or 0)


def open_database(settings: Settings) -> Database:
    """The embedded mode's one database (jobs, outbox, webhooks), with the webhooks of an
    earlier version's ``webhooks.sqlite3`` moved in."""
    from mlsharp.service.jobs.sqlite import SCHEMA as JOBS
    from mlsharp.service.webhooks.sqlite import SCHEMA as WEBHOOKS
    from mlsharp.service.webhooks.sqlite import TABLES

    data_dir = Path(settings.data_dir)
    db = Database(data_dir / "jobs.sqlite3", what="the job database", schema=JOBS + WEBHOOKS)
    try:
        merge_old_file(db, data_dir / "webhooks.sqlite3", TABLES)
    except BaseException:
        db.close()
        raise
    return db


def _embedded(settings: Settings, metrics: Metrics) -> ServiceState:
    from mlsharp.service.cache.sqlite import local_cache
    from mlsharp.service.files.local import LocalStorage
    from mlsharp.service.jobs.sqlite import SQLiteJobStore
    from mlsharp.service.limits.memory import MemoryBuckets
    from mlsharp.service.queue.local import LocalQueue
    from mlsharp.service.webhooks.sqlite import SQLiteWebhookStore

    data_dir = Path(settings.data_dir)
    db = open_database(settings)
    store = SQLiteJobStore(db)
    health = WorkerHealth()
    limiter = _limiter(settings.rate(), MemoryBuckets)
    state = ServiceState(
        settings=settings,
        store=store,
        storage=LocalStorage(data_dir),
        cache=local_cache(
            data_dir / "cache", max_bytes=settings.cache_max_bytes, enabled=settings.cache_enabled
        ),
        webhooks=WebhookService(SQLiteWebhookStore(db), **webhook_options(settings, metrics)),
        metrics=metrics,
        api_keys=ApiKeys(settings.api_keys),
        limiter=limiter,
        notifier=ChangeNotifier(),
        queue=LocalQueue(store, health),
        health=health,
        auth_failures=_limiter(settings.auth_failure_rate(), MemoryBuckets),
    )
    state.closers.append(db.close)
    return state


def _scale_out(settings: Settings, metrics: Metrics) -> ServiceState:
    from mlsharp.service.cache.redis import RedisCacheIndex
    from mlsharp.service.files.local import LocalBlobs, LocalStorage
    from mlsharp.service.files.ports import Blobs, Storage
    from mlsharp.service.jobs.redis import RedisJobStore
    from mlsharp.service.limits.redis import RedisBuckets
    from mlsharp.service.queue.dramatiq import DramatiqQueue
    from mlsharp.service.redis_conn import connect
    from mlsharp.service.webhooks.redis import RedisWebhookStore

    assert settings.queue is not None
    data_dir = Path(settings.data_dir)
    ns = settings.queue_namespace
    client = connect(settings.queue)
    storage: Storage
    blobs: Blobs
    if settings.storage == "s3":
        from mlsharp.service.files.s3 import S3Blobs, S3Storage

        storage = S3Storage(settings, data_dir / "s3-staging" / "files")
        blobs = S3Blobs(
            settings,
            data_dir / "s3-staging" / "cache",
            prefix="cache/",
            local_budget=settings.cache_max_bytes,
        )
    else:
        storage = LocalStorage(data_dir)
        blobs = LocalBlobs(data_dir / "shared-cache")
    store = RedisJobStore(
        client,
        ns,
        lease_seconds=settings.queue_heartbeat_seconds,
        grace_seconds=settings.queue_grace_seconds,
    )
    enabled = settings.cache_enabled
    state = ServiceState(
        settings=settings,
        store=store,
        storage=storage,
        cache=ResultCache(
            RedisCacheIndex(client, ns) if enabled else None,
            blobs if enabled else None,
            max_bytes=settings.cache_max_bytes,
        ),
        webhooks=WebhookService(
            RedisWebhookStore(client, ns), **webhook_options(settings, metrics)
        ),
        metrics=metrics,
        api_keys=ApiKeys(settings.api_keys),
        limiter=_limiter(settings.rate(), lambda: RedisBuckets(client, ns)),
        notifier=ChangeNotifier(),
        queue=DramatiqQueue(settings, client, store, metrics),
        health=WorkerHealth(),
        # Wrong keys are counted per address in Redis, so every API instance refuses them.
        auth_failures=_limiter(
            settings.auth_failure_rate(), lambda: RedisBuckets(client, ns, "auth-failures")
        ),
    )
    state.closers.append(client.close)
    return state


def _limiter(
    rate: tuple[int, float] | None, buckets: Callable[[], BucketStore]
) -> RateLimiter | None:
    """A token bucket limiter of ``rate`` over a new store from ``buckets``; ``None``
    when the rate is off."""
    return TokenBucketLimiter(buckets(), *rate) if rate else None


def check_databases(settings: Settings) -> None:
    """Open and close the embedded mode's database, so that a damaged one stops
    ``mlsharp serve`` with one line (:class:`~mlsharp.errors.CorruptDatabase`) before it
    serves, rather than with a traceback from the app's start-up."""
    if not settings.queue:
        open_database(settings).close()


def webhook_options(settings: Settings, metrics: Metrics) -> dict[str, Any]:
    """Keyword options of the webhook service: delivery policy from the settings, and
    attempts counted in the metrics."""
    return {
        "allow_private": settings.webhook_allow_private,
        "max_attempts": settings.webhook_max_attempts,
        "backoff_seconds": settings.webhook_backoff_seconds,
        "timeout_seconds": settings.webhook_timeout_seconds,
        "concurrency": settings.webhook_concurrency,
        "max_per_owner": settings.webhook_max_per_key,
        # A job's event carries the job as GET /v1/jobs/{id} shows it.
        "render": lambda record: job_event_data(decode(record), settings.public_url or ""),
        "on_attempt": lambda event, ok: metrics.webhook_attempts.labels(
            event, "ok" if ok else "error"
        ).inc(),
    }


def cache_numbers(cache: ResultCache) -> dict[str, float]:
    """The cache gauges of the metrics, from the cache's ``stats()``."""
    stats = cache.stats()
    return {
        "entries": stats.entries,
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes,
        "hits": stats.hits,
        "misses": stats.misses,
    }
