"""Health, readiness, figures and Prometheus metrics."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from mlsharp._version import __version__
from mlsharp.service.api.cache import cache_stats
from mlsharp.service.api.jobs import _ERRORS
from mlsharp.service.deps import Owner, State, guard_health, guard_metrics
from mlsharp.service.metrics import CONTENT_TYPE
from mlsharp.service.schemas import ErrorBody, Health, Ready, Stats

router = APIRouter(tags=["system"])


def _device(state: State) -> str | None:
    engine = state.model.engine
    return str(engine.device) if engine is not None else None


@router.get(
    "/v1/health", response_model=Health, dependencies=[Depends(guard_health)], responses=_ERRORS
)
def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok", version=__version__)


class FormatInfo(BaseModel):
    """One output format a job can ask for."""

    name: str
    suffix: str = Field(description="file name ending, e.g. .ply")
    media_type: str
    scene: bool = Field(description="holds the 3D scene (false: a depth map)")
    frame: str | None = Field(
        description="coordinate frame of a scene file: opencv (y down, z forward) or opengl"
    )
    summary: str = Field("", description="what the format is, in a few words")
    viewer: bool = Field(False, description="the web page's viewer can show it")
    bytes_per_splat: float | None = Field(
        None, description="typical file bytes per splat of a SHARP scene (for choosing)"
    )


class ServiceInfo(BaseModel):
    """What a client needs before submitting: formats, defaults, limits, whether keys apply."""

    version: str
    formats: list[FormatInfo]
    default_formats: list[str] = Field(description="what a job without 'formats' produces")
    auth_required: bool = Field(description="requests need an API key")
    max_upload_bytes: int


@router.get(
    "/v1/info",
    response_model=ServiceInfo,
    dependencies=[Depends(guard_health)],
    responses=_ERRORS,
)
def info(state: State) -> ServiceInfo:
    """Output formats, default formats, upload limit and whether an API key is required."""
    from mlsharp.formats import FORMATS

    formats = [
        FormatInfo(
            name=spec.name,
            suffix=spec.suffix,
            media_type=spec.media_type,
            scene=spec.scene,
            frame=spec.frame,
            summary=spec.summary,
            viewer=spec.viewer,
            bytes_per_splat=spec.bytes_per_splat,
        )
        for spec in FORMATS.values()
    ]
    settings = state.settings
    return ServiceInfo(
        version=__version__,
        formats=formats,
        default_formats=list(settings.default_formats),
        auth_required=state.api_keys.required,
        max_upload_bytes=settings.max_upload_bytes,
    )


@router.get(
    "/v1/ready",
    response_model=Ready,
    dependencies=[Depends(guard_health)],
    responses={503: {"model": Ready}, **_ERRORS},
)
def ready(state: State, response: Response) -> Ready:
    """Readiness: 200 once the model is loaded on its device and the workers run jobs;
    503 while the model loads or failed, or a worker died, cannot make progress (a full
    disk) or is stuck on one job past the time limit (``error`` says which)."""
    settings = state.settings
    engine = state.model.engine
    error = state.model.error
    is_ready = engine is not None
    if is_ready:
        error = state.health.problem(settings.job_time_limit_seconds)
        is_ready = error is None
    if settings.workers == 0:  # an API-only node: ready without a model
        is_ready = True
    if not is_ready:
        response.status_code = 503
    return Ready(ready=is_ready, device=_device(state), preset=settings.preset, error=error)


@router.get("/v1/stats", response_model=Stats, responses=_ERRORS)
def stats(state: State, _owner: Owner) -> Stats:
    """Device, memory, queue depth, job counts, cache, uptime and version."""
    counts = state.store.counts()
    return Stats(
        version=__version__,
        uptime_seconds=round(time.time() - state.started_at, 3),
        device=_device(state),
        preset=state.settings.preset,
        model_loaded=state.model.engine is not None,
        memory=state.device_memory(),
        queue_depth=counts["queued"],
        jobs=counts,
        cache=cache_stats(state.cache),
    )


@router.get(
    "/metrics",
    dependencies=[Depends(guard_metrics)],
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        429: {"model": ErrorBody},
    },
)
def metrics(state: State) -> Response:
    """Prometheus exposition of requests, latency, stage durations, queue, cache, memory."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


HealthDep = Annotated[None, Depends(guard_health)]
