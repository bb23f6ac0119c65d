"""The service's parts, built once per app from the settings and shared by every route.

``ServiceState`` holds the settings, the job store, file storage, result cache, webhooks,
metrics, limiter and the model, each typed with its concept's port. The model loads on a
background thread started by the app's lifespan, so ``/v1/health`` answers at once and
``/v1/ready`` turns true when the weights are in memory; jobs submitted meanwhile wait in
the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlsharp.config import Settings
from mlsharp.imaging import DecodeBudget
from mlsharp.service.auth import ApiKeys
from mlsharp.service.cache import ResultCache
from mlsharp.service.events import ChangeNotifier
from mlsharp.service.files.ports import Storage
from mlsharp.service.health import WorkerHealth
from mlsharp.service.jobs import JobStore
from mlsharp.service.limits import RateLimiter
from mlsharp.service.metrics import Metrics
from mlsharp.service.queue.ports import JobQueue
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
    """Everything a request handler or worker needs; see the module docstring.

    Built by :func:`mlsharp.service.backends.build_state`, the one place that knows which
    adapters (embedded or scale-out) sit behind these ports.
    """

    settings: Settings
    store: JobStore
    storage: Storage
    cache: ResultCache
    webhooks: WebhookService
    metrics: Metrics
    api_keys: ApiKeys
    limiter: RateLimiter | None
    notifier: ChangeNotifier
    #: How jobs reach the runner (told about every queued job).
    queue: JobQueue
    #: The job runner's threads, as readiness sees them.
    health: WorkerHealth
    model: ModelSlot = field(default_factory=ModelSlot)
    started_at: float = field(default_factory=time.time)
    #: Released by :meth:`close` after the parts (a database, the Redis connection pool).
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: Wrong API keys per client address (``auth_failure_limit``); ``None``: unthrottled.
    auth_failures: RateLimiter | None = None
    #: Memory for decoding photos, shared by requests and workers (``max_decode_bytes``).
    decode_budget: DecodeBudget = field(init=False)

    def __post_init__(self) -> None:
        self.decode_budget = DecodeBudget(self.settings.max_decode_bytes)

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
        from mlsharp.runtime.peak import process_memory

        return process_memory()

    def close(self) -> None:
        """Stop background delivery and close the databases and connections."""
        self.webhooks.close()
        self.cache.close()
        self.store.close()
        for close in self.closers:
            close()


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


def checkpoint_digest(path: Path | None, data_dir: Path) -> str:
    """SHA-256 of the checkpoint, remembered per (path, size, mtime) in the data dir.

    Part of every cache key, so results of different weights never mix. Hashing Apple's
    2.6 GB file takes seconds, hence the memo.
    """
    from mlsharp.weights import memoized_sha256

    if path is None:
        return "unknown"
    return memoized_sha256(path, data_dir / "checkpoint-digests.json")
