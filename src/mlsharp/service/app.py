"""``create_app(settings)``: the FastAPI application of ``mlsharp serve``.

Building the app opens nothing; the lifespan does, in order: build the parts
(:func:`~mlsharp.service.backends.build_state`), start webhook delivery, start loading the
model on a background thread and the job runner (which takes jobs once the model is
loaded), and the expiry sweep. Shutdown reverses it; queued jobs stay queued for the next
start, and runs still going when the drain time runs out are handed back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from mlsharp._version import __version__
from mlsharp.config import Settings
from mlsharp.errors import MlsharpError
from mlsharp.service import web
from mlsharp.service.api import batches, cache, jobs, predict, system, webhooks
from mlsharp.service.backends import build_state, runner_threads
from mlsharp.service.body import BodyLimitMiddleware, BodyTimeoutMiddleware
from mlsharp.service.edge import AuthBeforeBodyMiddleware
from mlsharp.service.http_errors import install_error_handlers
from mlsharp.service.jobs.runner import JobRunner, purge_expired
from mlsharp.service.metrics import Metrics
from mlsharp.service.middleware import RequestContextMiddleware
from mlsharp.service.state import ServiceState

log = logging.getLogger("mlsharp.service")

#: Seconds between sweeps for expired jobs.
EXPIRY_SWEEP_SECONDS = 300.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service as an ASGI app; the model and stores open in its lifespan."""
    settings = settings or Settings.load()
    # Built here, not in the lifespan: the request middleware needs it when the app is made.
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(build_state, settings, metrics)
        app.state.mlsharp = state
        state.webhooks.start()
        runner = JobRunner(state, state.queue, threads=runner_threads(settings))
        if settings.workers > 0:
            threading.Thread(
                target=state.load_model, name="mlsharp-model-loader", daemon=True
            ).start()
            runner.start()
        sweeper = asyncio.create_task(_sweep_expired(state))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.to_thread(runner.stop)
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="MLSharp 3D Maker API",
        version=__version__,
        description="One photo in, a 3D Gaussian Splatting scene out (Apple's SHARP model).",
        lifespan=lifespan,
        # /docs is served by the web router from package data (FastAPI's default loads
        # Swagger UI from a CDN, blank offline); /redoc redirects there.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    for module in (jobs, batches, predict, webhooks, cache, system):
        app.include_router(module.router)
    # The web page last: it owns only "/", "/docs", "/redoc" and "/static/...", never /v1
    # or /metrics.
    app.include_router(web.router)
    # Middleware added first runs innermost. The key is checked before a body is read,
    # inside CORS so that its 401/403/429 carry the CORS headers a browser needs.
    app.add_middleware(AuthBeforeBodyMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Idempotency-Key", "Content-Type"],
            expose_headers=["Location", "Idempotent-Replayed", "X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyTimeoutMiddleware, seconds=settings.body_timeout_seconds)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    if settings.trusted_proxies:
        # Outermost: every part below sees the client a trusted proxy names.
        from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


async def _sweep_expired(state: ServiceState) -> None:
    """Purge expired jobs every ``EXPIRY_SWEEP_SECONDS`` for the life of the app.

    A failed sweep (a full disk, Redis or the object storage away) is logged and the
    next one tries again: nothing but cancellation ends this loop.
    """
    while True:
        try:
            await asyncio.to_thread(purge_expired, state)
        except (OSError, MlsharpError) as error:
            log.warning("expiry sweep failed: %s", error)
        except Exception:  # e.g. an S3 client error: retried at the next sweep
            log.exception("expiry sweep failed")
        await asyncio.sleep(EXPIRY_SWEEP_SECONDS)
