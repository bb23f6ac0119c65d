"""``POST /v1/predict``: submit and wait, for scripts that want one call (the seed's shape)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from mlsharp.errors import RequestError
from mlsharp.service.api.jobs import _ERRORS, read_upload, wait_for_job
from mlsharp.service.deps import Owner, State, base_url
from mlsharp.service.jobs import JobStatus
from mlsharp.service.schemas import ErrorBody, JobError, PredictResult
from mlsharp.service.submit import Submission, parse_formats, submit
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
    state: State,
    owner: Owner,
    file: Annotated[UploadFile, File(description="the photo")],
    focal_mm: Annotated[float | None, Form(gt=0, le=10000)] = None,
    formats: Annotated[str | None, Form(max_length=200)] = None,
) -> PredictResult:
    """Queue the photo like ``POST /v1/jobs`` and answer when its job has finished."""
    data, name = await read_upload(file)
    sub = Submission(
        data=data,
        filename=name,
        focal_mm=focal_mm,
        formats=parse_formats(formats, state.settings.default_formats),
        owner=owner,
    )
    job, _ = await run_in_threadpool(submit, state, sub)
    final = await wait_for_job(state, job.id, state.settings.sync_timeout_seconds)
    if final is None or not final.terminal:
        raise PredictTimeout(
            f"job {job.id} did not finish within {state.settings.sync_timeout_seconds:g} s; "
            f"it continues: follow GET /v1/jobs/{job.id}"
        )
    urls = job_links(final, base_url(state)).results
    elapsed = (final.finished_at or final.created_at) - final.created_at
    return PredictResult(
        task_id=final.id,
        status="success" if final.status is JobStatus.SUCCEEDED else final.status.value,
        url=next(iter(urls.values()), None),
        urls=urls,
        processing_time=round(elapsed, 4),
        error=JobError(**final.error) if final.error else None,
    )
