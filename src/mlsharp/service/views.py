"""Turning records into what clients see: job views, links and timestamps.

Links are relative (``/v1/jobs/...``) unless ``Settings.public_url`` is set, in which
case they are absolute (webhook receivers need absolute links to fetch results).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mlsharp.service.jobs import JobRecord, JobStatus
from mlsharp.service.schemas import JobError, JobLinks, JobPublic


def iso(timestamp: float | None) -> str | None:
    """Unix seconds as ISO-8601 UTC with milliseconds (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_links(job: JobRecord, base: str = "") -> JobLinks:
    """Status, event-stream and result URLs of a job."""
    root = f"{base}/v1/jobs/{job.id}"
    results = {}
    if job.status is JobStatus.SUCCEEDED:
        results = {fmt: f"{root}/result?format={fmt}" for fmt in job.outputs}
    return JobLinks(self=root, events=f"{root}/events", results=results)


def job_view(job: JobRecord, base: str = "") -> JobPublic:
    """The public view of a job record."""
    return JobPublic(
        id=job.id,
        status=job.status.value,
        stage=job.stage,
        progress=round(job.progress, 4),
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        input_name=job.input_name,
        focal_mm=job.focal_mm,
        formats=list(job.formats),
        max_splats=job.density.get("max_splats"),
        min_opacity=job.density.get("min_opacity"),
        splats=job.stats.get("splats"),
        sizes=dict(job.stats.get("bytes", {})),
        timings={k: round(v, 6) for k, v in job.timings.items()},
        error=JobError(**job.error) if job.error else None,
        cached=job.cached,
        cancel_requested=job.cancel_requested,
        batch_id=job.batch_id,
        panorama=job.panorama,
        links=job_links(job, base),
    )


def job_event_data(job: JobRecord, base: str = "") -> dict[str, Any]:
    """The job as JSON-ready data (webhook payloads and event streams)."""
    return job_view(job, base).model_dump(mode="json")
