"""The embedded queue consumer: worker threads that run queued jobs through the library path.

    stored input --load_image--> Engine.predict --splat.write--> result files --> job succeeded

Each thread claims the oldest queued job from the store, so several threads (or several
processes sharing the store) never run the same job twice. One forward runs at a time per
engine; the photos of jobs that reach inference while it runs share the next forward
(:class:`~mlsharp.runtime.batcher.Batcher`, up to the engine's batch size), and decoding
and writing of other jobs overlap with it. A job's record is updated at each stage; the
outcome is published to webhooks.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from mlsharp.errors import MlsharpError
from mlsharp.panorama import cache_model_id
from mlsharp.runtime.batcher import Batcher
from mlsharp.service.cache import cache_key, link_or_copy
from mlsharp.service.jobs import JobRecord, JobStatus, stage_progress
from mlsharp.service.preview import PREVIEW_FORMAT, PREVIEW_SUFFIX, cache_formats, write_preview
from mlsharp.service.state import ServiceState
from mlsharp.service.views import job_event_data

log = logging.getLogger("mlsharp.worker")

#: Seconds an idle worker sleeps before looking at the store again without a wake-up
#: (other processes may queue jobs in a shared store).
IDLE_POLL_SECONDS = 1.0


class JobCanceled(Exception):
    """Raised inside a job when a client canceled it while it ran."""


def output_name(job: JobRecord, fmt: str) -> str:
    """The result file name of ``job`` in ``fmt``: ``<input stem><suffix>``."""
    from mlsharp.splat import SUFFIXES

    suffix = PREVIEW_SUFFIX if fmt == PREVIEW_FORMAT else SUFFIXES[fmt]
    return f"{Path(job.input_name).stem or 'scene'}{suffix}"


def result_stats(
    state: ServiceState, job: JobRecord, outputs: dict[str, str], splats: int | None = None
) -> dict[str, Any]:
    """What a job's result holds: ``{"splats": N, "bytes": {format: size}}``.

    ``splats`` is counted from a scene file's header when not given (a cached result).
    Files that cannot be looked at (gone meanwhile) are left out; this never raises.
    """
    from mlsharp import formats, splat

    sizes: dict[str, int] = {}
    for fmt, name in outputs.items():
        path = state.storage.output_path(job.id, name)
        try:
            sizes[fmt] = path.stat().st_size
            spec = formats.FORMATS.get(fmt)
            if splats is None and spec is not None and spec.scene:
                splats = splat.count(path, fmt)
        except (OSError, MlsharpError):
            continue
    stats: dict[str, Any] = {"bytes": sizes}
    if splats is not None:
        stats["splats"] = splats
    return stats


def link_cached_outputs(
    state: ServiceState, job: JobRecord, files: dict[str, Path]
) -> dict[str, str]:
    """Hard-link (or copy) cached result files into the job's output folder.

    ``files`` maps each of the job's formats (and maybe ``preview``) to a file in the
    cache; returns the job's ``outputs`` (format -> file name).
    """
    out_dir = state.storage.output_dir(job.id)
    outputs = {}
    for fmt in files:
        name = output_name(job, fmt)
        link_or_copy(files[fmt], out_dir / name)
        outputs[fmt] = name
    commit = getattr(state.storage, "commit_outputs", None)
    if commit is not None:  # object storage (service.distributed.s3): upload them
        commit(job.id, outputs)
    return outputs


class JobRunner:
    """Threads that take queued jobs and run them; ``start``/``stop`` with the app."""

    def __init__(self, state: ServiceState, threads: int = 1) -> None:
        self.state = state
        self.thread_count = threads
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._batcher: Batcher | None = None
        self._batcher_lock = threading.Lock()
        state.wake_workers = self.wake

    def start(self) -> None:
        """Start the worker threads."""
        for index in range(self.thread_count):
            thread = threading.Thread(
                target=self._loop, name=f"mlsharp-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Tell idle workers that there may be work."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the jobs in hand and stop; queued jobs stay queued for the next start."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        state = self.state
        state.model.ready.wait()
        while not self._stop.is_set():
            if state.model.engine is None:  # the model failed to load: keep jobs queued
                self._stop.wait(IDLE_POLL_SECONDS * 5)
                continue
            job = state.store.claim_next()
            guard = state.model.engine.memory_guard
            if job is None:
                guard.maybe_release_idle()  # a no-op unless configured
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
                continue
            state.notifier.notify()
            self.run_job(job)
            guard.after_job()  # reclaims cached memory above the configured threshold

    def run_job(self, job: JobRecord) -> None:
        """Run one claimed job to its end, recording success, failure or cancellation."""
        started = time.perf_counter()
        try:
            outputs, timings, cached, stats = self._execute(job)
        except JobCanceled:
            self._finish(job, JobStatus.CANCELED, stage="canceled")
        except MlsharpError as error:
            self._finish(
                job,
                JobStatus.FAILED,
                stage="failed",
                error={"code": error.code, "message": str(error)},
            )
        except Exception:  # a bug: record the job as failed, keep the worker alive, log it
            log.exception("job %s failed unexpectedly", job.id)
            self._finish(
                job,
                JobStatus.FAILED,
                stage="failed",
                error={"code": "internal_error", "message": "the job failed unexpectedly"},
            )
        else:
            timings["total"] = time.perf_counter() - started
            self._finish(
                job,
                JobStatus.SUCCEEDED,
                stage="done",
                outputs=outputs,
                timings=timings,
                cached=cached,
                stats=stats,
                progress=1.0,
            )

    def _execute(
        self, job: JobRecord
    ) -> tuple[dict[str, str], dict[str, float], bool, dict[str, Any]]:
        """Decode, look in the cache, predict, thin out and write one job's files:
        ``(outputs, timings, cached, stats)``."""
        from mlsharp.imaging import load_image

        state = self.state
        timings: dict[str, float] = {}
        start = time.perf_counter()
        image = load_image(
            state.storage.input_path(job.id, job.input_suffix),
            focal_mm=job.focal_mm,
            max_pixels=state.settings.max_pixels,
            name=job.input_name,
        )
        timings["decode"] = time.perf_counter() - start
        key = job.cache_key  # set when the submission already looked in the cache
        if key is None and state.model.model_id is not None and state.cache.enabled:
            # Submitted before the model was loaded: look now (it may be a repeat).
            key = cache_key(
                image.pixels,
                focal_px=image.focal_px,
                model_id=cache_model_id(state.model.model_id, job.panorama),
                options=job.density,
            )
            hit = state.cache.get(key, cache_formats(state.settings, job.formats))
            state.metrics.cache_lookups.labels("hit" if hit else "miss").inc()
            if hit:
                outputs = link_cached_outputs(state, job, hit)
                return outputs, timings, True, result_stats(state, job, outputs)
        if job.panorama:
            gaussians = self._predict_panorama(job, image)
        else:
            gaussians = self._predictor().predict(
                image, on_stage=lambda s: self._advance(job.id, s)
            )
        stage_times = gaussians.metadata["timings"]
        timings.update(
            preprocess=stage_times.preprocess,
            inference=stage_times.inference,
            postprocess=stage_times.postprocess,
            transfer=stage_times.transfer,
        )
        if job.panorama:
            timings.update(cut=stage_times.extra["cut"], merge=stage_times.extra["merge"])
        self._advance(job.id, "write")
        outputs, timings["write"], splats = self._write(job, gaussians)
        if key is not None:
            out_dir = state.storage.output_dir(job.id)
            state.cache.put(key, {fmt: out_dir / name for fmt, name in outputs.items()})
        return outputs, timings, False, result_stats(state, job, outputs, splats)

    def _predict_panorama(self, job: JobRecord, image: Any) -> Any:
        """The panorama's views through the batcher (they share forwards with other jobs'
        photos), merged into one scene; the job's stage follows the views."""
        from mlsharp.panorama import panorama_kind, predict_panorama

        engine = self.state.model.engine
        assert engine is not None  # _loop only runs jobs once the model is loaded
        kind = panorama_kind(image, True)  # checked when it was submitted
        assert kind is not None
        return predict_panorama(
            self._predictor(),
            image,
            kind=kind,
            max_side=engine.internal_resolution,
            progress=lambda stage, fraction: self._advance(job.id, stage),
        )

    def _predictor(self) -> Batcher:
        """The engine behind a :class:`Batcher`: concurrent worker threads share forwards
        (up to the engine's suggested batch size; one at a time with one thread)."""
        with self._batcher_lock:
            if self._batcher is None:
                engine = self.state.model.engine
                assert engine is not None  # _loop only runs jobs once the model is loaded
                self._batcher = Batcher(
                    engine,
                    engine.suggested_batch_size,
                    on_batch=self.state.metrics.batch_size.observe,
                )
            return self._batcher

    def _write(self, job: JobRecord, gaussians: Any) -> tuple[dict[str, str], float, int]:
        """Write the job's formats (and the preview) of the scene thinned out as the job
        asks; ``(outputs, seconds, splats written)``."""
        from mlsharp import splat
        from mlsharp.splat.density import Density

        start = time.perf_counter()
        gaussians = splat.reduce_density(gaussians, Density.checked(**job.density))
        out_dir = self.state.storage.output_dir(job.id)
        outputs = {}
        for fmt in job.formats:
            name = output_name(job, fmt)
            splat.write(gaussians, out_dir / name, fmt)  # atomic per file
            outputs[fmt] = name
        name = output_name(job, PREVIEW_FORMAT)  # an extra output, not one of job.formats
        if self.state.settings.previews and write_preview(gaussians, out_dir / name):
            outputs[PREVIEW_FORMAT] = name
        return outputs, time.perf_counter() - start, len(gaussians)

    def _advance(self, job_id: str, stage: str) -> None:
        """Record that ``stage`` started; raises :class:`JobCanceled` if cancel was asked."""
        try:
            job = self.state.store.update(job_id, stage=stage, progress=stage_progress(stage))
        except KeyError:  # deleted while running
            raise JobCanceled() from None
        self.state.notifier.notify()
        if job.cancel_requested:
            raise JobCanceled()

    def _finish(self, job: JobRecord, status: JobStatus, **changes: Any) -> None:
        state = self.state
        try:
            final = state.store.update(job.id, status=status, finished_at=time.time(), **changes)
        except KeyError:  # the job was deleted meanwhile; drop its files
            state.storage.delete_job(job.id)
            return
        state.notifier.notify()
        state.metrics.jobs_finished.labels(status.value).inc()
        if status is JobStatus.SUCCEEDED and not final.cached:
            state.metrics.observe_stages(final.timings)
        publish_outcome(state, final)
        log.info(
            "job %s %s%s",
            job.id,
            status.value,
            f" ({final.error['message']})" if final.error else "",
        )


def publish_outcome(state: ServiceState, job: JobRecord) -> None:
    """Send ``job.succeeded`` / ``job.failed`` to subscribed webhooks (no network here)."""
    event = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed"}.get(job.status)
    if event is not None:
        data = job_event_data(job, state.settings.public_url or "")
        state.webhooks.publish(event, data, owner=job.owner)


def purge_expired(state: ServiceState) -> int:
    """Delete finished jobs older than the retention period; returns how many."""
    ttl_hours = state.settings.result_ttl_hours
    if ttl_hours <= 0:
        return 0
    expired = state.store.expired(time.time() - ttl_hours * 3600)
    for job_id in expired:
        # Files first: if their deletion fails, the record stays and the next sweep
        # tries again (the other order would leave files nothing points to).
        state.storage.delete_job(job_id)
        state.store.delete(job_id)
    if expired:
        log.info("removed %d expired job(s)", len(expired))
    return len(expired)
