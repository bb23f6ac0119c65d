"""``POST /v1/predict``: submit and wait, for scripts that want one call (the seed's shape)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from mlsharp.errors import RequestError
from mlsharp.service.api.jobs import (
    _ERRORS,
    FocalMmForm,
    FormatsForm,
    MaxSplatsForm,
    MinOpacityForm,
    PanoramaForm,
    submit_upload,
    wait_for_job,
)
from mlsharp.service.deps import Owner, State
from mlsharp.service.jobs import JobStatus
from mlsharp.service.schemas import ErrorBody, JobError, PredictResult
from mlsharp.service.views import job_links

router = APIRouter(prefix="/v1", tags=["predict"])


class PredictTimeout(RequestError):
    """The job did not finish within ``sync_timeout_seconds``; it keeps running."""

    http_status = 504
    code = "timeout"


@router.post(
    "/predict", response_model=PredictResult, responses={504: {"model": ErrorBody}, **_ERRORS}
)
async def predict(
    request: Request,
    state: State,
    owner: Owner,
    file: Annotated[UploadFile, File(description="the photo")],
    focal_mm: FocalMmForm = None,
    formats: FormatsForm = None,
    max_splats: MaxSplatsForm = None,
    min_opacity: MinOpacityForm = None,
    panorama: PanoramaForm = None,
) -> PredictResult:
    """Queue the photo like ``POST /v1/jobs`` and answer when its job has finished.

    The URLs are absolute (``public_url``, else the address the client called), as the
    earlier product's clients expect: they download ``url`` as it is."""
    job, _ = await submit_upload(
        state,
        file,
        focal_mm=focal_mm,
        formats=formats,
        owner=owner,
        max_splats=max_splats,
        min_opacity=min_opacity,
        panorama=panorama,
    )
    final = await wait_for_job(state, job.id, state.settings.sync_timeout_seconds)
    if final is None or not final.terminal:
        raise PredictTimeout(
            f"job {job.id} did not finish within {state.settings.sync_timeout_seconds:g} s; "
            f"it continues: follow GET /v1/jobs/{job.id}"
        )
    base = state.settings.public_url or str(request.base_url).rstrip("/")
    urls = job_links(final, base).results
    elapsed = (final.finished_at or final.created_at) - final.created_at
    return PredictResult(
        task_id=final.id,
        status="success" if final.status is JobStatus.SUCCEEDED else final.status.value,
        url=next(iter(urls.values()), None),
        urls=urls,
        processing_time=round(elapsed, 4),
        error=JobError(**final.error) if final.error else None,
    )
