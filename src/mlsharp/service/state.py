"""The service's parts, built once per app from the settings and shared by every route.

``ServiceState`` holds the settings, the job store, file storage, result cache, webhooks,
metrics, limiter and the model. The model loads on a background thread started by the
app's lifespan, so ``/v1/health`` answers at once and ``/v1/ready`` turns true when the
weights are in memory; jobs submitted meanwhile wait in the queue.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsharp.config import Settings
from mlsharp.service.auth import ApiKeys, RateLimiter, TokenBucketLimiter
from mlsharp.service.cache import ResultCache
from mlsharp.service.events import ChangeNotifier
from mlsharp.service.jobs import SQLiteJobStore
from mlsharp.service.metrics import Metrics, StateProbe
from mlsharp.service.storage import LocalStorage
from mlsharp.service.webhooks import WebhookService

if TYPE_CHECKING:
    from mlsharp.engine import Engine
    from mlsharp.runtime.memory import MemoryGuard

log = logging.getLogger("mlsharp.service")


@dataclass
class ModelSlot:
    """The engine once loaded, or why it could not be; ``ready`` is set either way."""

    engine: Engine | None = None
    model_id: str | None = None
    error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)


@dataclass
class ServiceState:
    """Everything a request handler or worker needs; see the module docstring."""

    settings: Settings
    store: SQLiteJobStore
    storage: LocalStorage
    cache: ResultCache
    webhooks: WebhookService
    metrics: Metrics
    api_keys: ApiKeys
    limiter: RateLimiter | None
    notifier: ChangeNotifier
    model: ModelSlot = field(default_factory=ModelSlot)
    started_at: float = field(default_factory=time.time)
    #: Called when new work is queued (the in-process runner sets it to wake its threads).
    wake_workers: Callable[[], None] | None = None

    @classmethod
    def build(cls, settings: Settings, metrics: Metrics | None = None) -> ServiceState:
        """Open (or create) everything under ``settings.data_dir``."""
        if settings.queue:  # scale-out: Redis, the task queue, S3 (docs/deployment.md)
            from mlsharp.service.distributed.state import build_distributed

            return build_distributed(cls, settings, metrics or Metrics())
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        metrics = metrics or Metrics()
        rate = settings.rate()
        state = cls(
            settings=settings,
            store=SQLiteJobStore(data_dir / "jobs.sqlite3"),
            storage=LocalStorage(data_dir),
            cache=ResultCache(
                data_dir / "cache",
                max_bytes=settings.cache_max_bytes,
                enabled=settings.cache_enabled,
            ),
            webhooks=WebhookService(
                data_dir / "webhooks.sqlite3", **webhook_options(settings, metrics)
            ),
            metrics=metrics,
            api_keys=ApiKeys(settings.api_keys),
            limiter=TokenBucketLimiter(*rate) if rate else None,
            notifier=ChangeNotifier(),
        )
        metrics.attach(
            StateProbe(
                job_counts=state.store.counts,
                cache=lambda: cache_numbers(state.cache),
                device_memory=state.device_memory,
            )
        )
        return state

    def load_model(self) -> None:
        """Load the engine (runs on a background thread); records success or the error."""
        from mlsharp.engine import Engine
        from mlsharp.errors import MlsharpError
        from mlsharp.runtime.autotune import server_options

        settings = self.settings
        try:
            engine = Engine.load(
                settings.checkpoint,
                preset=settings.preset,
                device=settings.device,
                download=not settings.offline,
                progress=False,
                # The settings' options, or with `autotune` the cached/tuned choice.
                options=server_options(settings),
            )
            engine.memory_guard = _memory_guard(engine, settings, self.metrics)
            digest = checkpoint_digest(engine.checkpoint, Path(settings.data_dir))
            self.model.model_id = f"{settings.preset}:{digest}{_options_suffix(engine)}"
            self.model.engine = engine
            log.info("model ready: preset %s on %s", settings.preset, engine.device)
        except MlsharpError as error:
            self.model.error = str(error)
            log.error("the model could not be loaded: %s", error)
        except Exception as error:  # a device failure (CUDA error) or a bug: say it, with
            # the traceback in the log, instead of a 503 that never explains itself
            first = (str(error).strip().splitlines() or [""])[0]
            self.model.error = f"{type(error).__name__}: {first}" if first else repr(error)
            log.exception("the model could not be loaded: %s", self.model.error)
        finally:
            self.model.ready.set()
            if self.wake_workers is not None:
                self.wake_workers()

    def device_memory(self) -> dict[str, float]:
        """Memory figures of the inference device (process RSS on the CPU)."""
        engine = self.model.engine
        if engine is not None and engine.device.type == "cuda":
            import torch

            return {
                "allocated": float(torch.cuda.memory_allocated(engine.device)),
                "reserved": float(torch.cuda.memory_reserved(engine.device)),
                "total": float(torch.cuda.get_device_properties(engine.device).total_memory),
            }
        return {"process_rss": float(_process_rss())}

    def close(self) -> None:
        """Stop background delivery and close the databases."""
        self.webhooks.close()
        self.cache.close()
        self.store.close()


def webhook_options(settings: Settings, metrics: Metrics) -> dict[str, Any]:
    """Keyword options of every webhook backend: delivery policy from the settings, and
    attempts counted in the metrics."""
    return {
        "allow_private": settings.webhook_allow_private,
        "max_attempts": settings.webhook_max_attempts,
        "backoff_seconds": settings.webhook_backoff_seconds,
        "timeout_seconds": settings.webhook_timeout_seconds,
        "on_attempt": lambda event, ok: metrics.webhook_attempts.labels(
            event, "ok" if ok else "error"
        ).inc(),
    }


def _memory_guard(engine: Engine, settings: Settings, metrics: Metrics) -> MemoryGuard:
    """The engine's memory policy from the settings; releases are counted in metrics."""
    from mlsharp.runtime.memory import MemoryGuard

    return MemoryGuard(
        engine.device,
        idle_seconds=settings.memory_release_idle_seconds,
        reclaim_threshold=settings.memory_reclaim_threshold,
        on_release=lambda reason: metrics.memory_releases.labels(reason).inc(),
    )


def _options_suffix(engine: Engine) -> str:
    """Part of the model id (and so of cache keys) when the runtime options are not the
    reference's: results of another precision or resolution must not mix with fp32's."""
    from mlsharp.runtime.options import RuntimeOptions

    options = engine.options
    return "" if options == RuntimeOptions() else f":{options.label()}"


def cache_numbers(cache: ResultCache) -> dict[str, float]:
    """The cache gauges of the metrics, from any cache backend's ``stats()``."""
    stats = cache.stats()
    return {
        "entries": stats.entries,
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes,
        "hits": stats.hits,
        "misses": stats.misses,
    }


def _process_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import resource  # not on Windows; fine: /proc is Linux-only anyway

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def checkpoint_digest(path: Path | None, data_dir: Path) -> str:
    """SHA-256 of the checkpoint, remembered per (path, size, mtime) in the data dir.

    Part of every cache key, so results of different weights never mix. Hashing Apple's
    2.6 GB file takes seconds, hence the memo.
    """
    from mlsharp.weights import memoized_sha256

    if path is None:
        return "unknown"
    return memoized_sha256(path, data_dir / "checkpoint-digests.json")
