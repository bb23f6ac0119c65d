"""Request and response bodies of the API (they make the OpenAPI document).

Request models are strict (no coercion, no unknown fields) so clients learn about mistakes
instead of having them silently reinterpreted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatusName = Literal["queued", "running", "succeeded", "failed", "canceled"]


class ErrorBody(BaseModel):
    """The one error schema of every non-2xx response."""

    error: str = Field(description="machine-readable error code, e.g. invalid_image")
    message: str = Field(description="what went wrong, for people")
    status_code: int
    path: str
    timestamp: str = Field(description="ISO-8601 UTC time of the error")
    request_id: str


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str


class JobLinks(BaseModel):
    """Where to find more about a job."""

    self: str
    events: str
    results: dict[str, str] = Field(description="format name -> download URL")


class JobCreated(BaseModel):
    """Answer to a submission."""

    id: str
    status: JobStatusName
    status_url: str
    cached: bool = False


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: str
    status: JobStatusName
    stage: str
    progress: float = Field(ge=0, le=1)
    created_at: str
    started_at: str | None
    finished_at: str | None
    input_name: str
    focal_mm: float | None
    formats: list[str]
    max_splats: int | None = Field(None, description="splats kept at most, if limited")
    min_opacity: float | None = Field(None, description="least opacity kept, if limited")
    splats: int | None = Field(None, description="splats in the result (when succeeded)")
    sizes: dict[str, int] = Field(
        default_factory=dict, description="format name -> file size in bytes (when succeeded)"
    )
    timings: dict[str, float] = Field(description="seconds per stage")
    error: JobError | None
    cached: bool = Field(description="the result came from the cache")
    cancel_requested: bool = Field(
        description="a cancel was asked while running; it takes effect at the next stage"
    )
    batch_id: str | None
    panorama: bool = Field(
        default=False, description="a 360° panorama, predicted as one scene around the camera"
    )
    links: JobLinks


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobPublic]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="URL of the next page, if any")


class PredictResult(BaseModel):
    """Answer of the synchronous ``POST /v1/predict`` (the earlier product's shape)."""

    task_id: str
    status: str = Field(description="'success', 'failed' or 'canceled'")
    url: str | None = Field(description="download URL of the first requested format")
    urls: dict[str, str]
    processing_time: float = Field(description="seconds from submission to completion")
    error: JobError | None = None


class BatchPublic(BaseModel):
    """A batch of jobs and its overall state."""

    id: str
    status: Literal["queued", "running", "completed"]
    counts: dict[str, int]
    jobs: list[JobPublic]
    archive_url: str
    created_at: str


class WebhookCreate(BaseModel):
    """Body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(
        default_factory=lambda: ["job.succeeded", "job.failed"], min_length=1, max_length=10
    )


class WebhookPublic(BaseModel):
    """A registered webhook (its secret is shown only when created)."""

    id: str
    url: str
    events: list[str]
    created_at: str


class WebhookCreated(WebhookPublic):
    """A new webhook, with the secret to verify its signatures."""

    secret: str


class AttemptPublic(BaseModel):
    """One delivery attempt."""

    number: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryPublic(BaseModel):
    """One event sent (or being sent) to a webhook."""

    id: str
    event: str
    status: str
    attempts: list[AttemptPublic]
    next_attempt_at: str | None
    created_at: str


class CacheStatsPublic(BaseModel):
    """Result cache figures."""

    enabled: bool
    size: int = Field(description="number of entries")
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    hit_rate: float = Field(description="hits / lookups, 0..1")


class CacheCleared(BaseModel):
    """Answer of ``POST /v1/cache/clear``."""

    status: str
    freed_bytes: int


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]
    version: str


class Ready(BaseModel):
    """Readiness: the model is loaded and jobs will run."""

    ready: bool
    device: str | None
    preset: str
    error: str | None = None


class Stats(BaseModel):
    """Service figures."""

    version: str
    uptime_seconds: float
    device: str | None
    preset: str
    model_loaded: bool
    memory: dict[str, float]
    queue_depth: int
    jobs: dict[str, int]
    cache: CacheStatsPublic
