"""``build_distributed``: the :class:`~mlsharp.service.state.ServiceState` of the scale-out
mode, called by ``ServiceState.build`` when ``settings.queue`` is set.

Opening it does no network I/O, so an API instance starts (and answers 503 with
``Retry-After`` on routes that need Redis) while Redis is still down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlsharp.config import Settings
from mlsharp.service.auth import ApiKeys
from mlsharp.service.distributed.blobs import LocalBlobs, S3Blobs
from mlsharp.service.distributed.cache import RedisResultCache
from mlsharp.service.distributed.job_store import RedisJobStore
from mlsharp.service.distributed.limiter import RedisTokenBucket
from mlsharp.service.distributed.queue import JobQueue
from mlsharp.service.distributed.redis_conn import connect
from mlsharp.service.distributed.webhooks import RedisWebhookService
from mlsharp.service.events import ChangeNotifier
from mlsharp.service.metrics import Metrics, StateProbe
from mlsharp.service.state import cache_numbers, webhook_options
from mlsharp.service.storage import LocalStorage


def build_distributed(state_cls: Any, settings: Settings, metrics: Metrics) -> Any:
    """Redis job store + task queue, shared cache, Redis rate limit and webhooks."""
    assert settings.queue is not None
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    ns = settings.queue_namespace
    client = connect(settings.queue)
    queue = JobQueue(settings, client)
    if settings.storage == "s3":
        from mlsharp.service.distributed.s3 import S3Storage

        storage: Any = S3Storage(settings, data_dir / "s3-staging" / "files")
        blobs: Any = S3Blobs(
            settings, data_dir / "s3-staging" / "cache", local_budget=settings.cache_max_bytes
        )
        blobs.prefix = f"{settings.s3_prefix}cache/"
    else:
        storage = LocalStorage(data_dir)
        blobs = LocalBlobs(data_dir / "shared-cache")
    rate = settings.rate()
    state = state_cls(
        settings=settings,
        store=RedisJobStore(
            client,
            ns,
            on_queued=queue.enqueue,
            lease_seconds=settings.queue_heartbeat_seconds,
            grace_seconds=settings.queue_grace_seconds,
        ),
        storage=storage,
        cache=RedisResultCache(
            client, ns, blobs, max_bytes=settings.cache_max_bytes, enabled=settings.cache_enabled
        ),
        webhooks=RedisWebhookService(client, ns, **webhook_options(settings, metrics)),
        metrics=metrics,
        api_keys=ApiKeys(settings.api_keys),
        limiter=RedisTokenBucket(client, ns, *rate) if rate else None,
        notifier=ChangeNotifier(),
    )
    state.queue = queue  # read by the queue runner (serve --workers N, mlsharp worker)

    metrics.attach(
        StateProbe(
            job_counts=state.store.counts,
            cache=lambda: cache_numbers(state.cache),
            device_memory=state.device_memory,
        )
    )
    return state
