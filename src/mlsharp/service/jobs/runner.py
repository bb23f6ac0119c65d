"""``JobRunner``: the one job runner of both modes.

    lease ─► stored input ─load_image─► cache? ─► Engine.predict ─splat.write─► results
          ─► storage.commit_outputs ─► store.finish(token) + the outbox entry, one commit

Jobs come from a :class:`~mlsharp.service.queue.ports.JobQueue` (worker threads over the
SQLite store, or the Redis task queue); each run holds a
:class:`~mlsharp.service.jobs.model.Lease` whose token fences every write it makes, so a
run that another took over can no longer change the job. The photos of runs that reach
inference together share one forward (:class:`~mlsharp.runtime.batcher.Batcher`).

Outcomes, the same in both modes:

* **Poison inputs** (any ``MlsharpError``: an undecodable upload, a full disk while
  writing results) fail at once; retrying cannot help.
* **Other errors** (Redis or object storage away, a bug) put the job back to ``queued``
  with the error kept, to run again after a backoff (``job_retry_backoff_seconds``,
  doubling), until ``job_max_attempts``; then it fails with the last error.
* **Time limit** (scale-out): a run past ``job_time_limit_seconds`` fails (``job_timeout``).
* **Canceled** while running: it stops at the next stage and ends ``canceled``.
* An outcome that cannot be recorded (a full disk, Redis away) is retried until it can
  be; readiness shows why meanwhile.
* **Drain**: on stop, runs in hand have the timeout to finish; then their jobs are
  handed back (``queued`` again, the attempt not counted, sent again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlsharp._atomic import link_or_copy
from mlsharp.errors import MlsharpError, ServiceUnavailable, StorageError, StorageFull
from mlsharp.names import safe_stem
from mlsharp.panorama import cache_model_id
from mlsharp.runtime.batcher import Batcher
from mlsharp.service.cache import cache_key
from mlsharp.service.disk import storage_error
from mlsharp.service.health import describe, pauses
from mlsharp.service.jobs.model import JobRecord, JobStatus, Lease, LeaseLost
from mlsharp.service.preview import PREVIEW_FORMAT, PREVIEW_SUFFIX, cache_formats, write_preview
from mlsharp.service.queue.ports import JobQueue
from mlsharp.service.state import ServiceState

log = logging.getLogger("mlsharp.worker")

T = TypeVar("T")


class JobCanceled(Exception):
    """Raised inside a run when a client canceled its job."""


def output_name(job: JobRecord, fmt: str) -> str:
    """The result file name of ``job`` in ``fmt``: ``<input stem><suffix>``."""
    from mlsharp.splat import SUFFIXES

    suffix = PREVIEW_SUFFIX if fmt == PREVIEW_FORMAT else SUFFIXES[fmt]
    # safe_stem again: records written before names were bounded may hold any name.
    return f"{safe_stem(job.input_name)}{suffix}"


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
    """Hard-link (or copy) cached result files into the job's output folder and publish
    them (object storage uploads them); returns the job's ``outputs``."""
    out_dir = state.storage.output_dir(job.id)
    outputs = {}
    for fmt in files:
        name = output_name(job, fmt)
        link_or_copy(files[fmt], out_dir / name)
        outputs[fmt] = name
    state.storage.commit_outputs(job.id, outputs)
    return outputs


class JobRunner:
    """Runs the jobs ``queue`` hands over on ``threads`` threads; ``start``/``stop``."""

    def __init__(
        self,
        state: ServiceState,
        queue: JobQueue,
        *,
        threads: int = 1,
        debug_delay: float = 0.0,
    ) -> None:
        self.state = state
        self.queue = queue
        self.threads = threads
        #: Test hook (``mlsharp worker --debug-job-delay``): a window to kill a busy run.
        self.debug_delay = debug_delay
        self._stopping = threading.Event()
        self._boot: threading.Thread | None = None
        self._batcher: Batcher | None = None
        self._batcher_lock = threading.Lock()
        #: The runs this process holds: job id -> lease token (renewed on each beat).
        self._in_hand: dict[str, int] = {}
        self._in_hand_lock = threading.Lock()
        #: Set once the drain time ran out: runs still going must not record anything.
        self._handing_back = threading.Event()
        #: Splats each run in hand wrote (job id -> count), for its result's stats.
        self._splats: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start taking jobs once the model is loaded (waiting in the background)."""
        self._boot = threading.Thread(target=self._start, name="mlsharp-runner-boot", daemon=True)
        self._boot.start()

    def _start(self) -> None:
        model = self.state.model
        while not model.ready.wait(0.5):
            if self._stopping.is_set():
                return
        if model.engine is None:
            log.error("not running jobs: the model did not load (%s)", model.error)
            return
        guard = model.engine.memory_guard
        self.queue.start(
            self.run,
            threads=self.threads,
            on_idle=guard.maybe_release_idle,  # a no-op unless configured
            on_beat=self.beat,
            on_ended=self._ended,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Drain: runs in hand have ``timeout`` seconds to finish; the jobs still running
        then are handed back to the queue (see :meth:`hand_back`)."""
        self._stopping.set()
        self.state.health.stopping()
        if self._boot is not None:
            self._boot.join()
        self.queue.stop(timeout)
        self.hand_back()

    def in_hand(self) -> dict[str, int]:
        """The runs of this process: job id -> lease token."""
        with self._in_hand_lock:
            return dict(self._in_hand)

    def beat(self) -> None:
        """On every queue heartbeat: keep the leases of the runs in hand alive, and say
        which model this worker runs (API instances look in the shared cache with it)."""
        self.state.store.renew_leases(self.in_hand())
        model_id = self.state.model.model_id
        if model_id is not None:
            ttl = max(60.0, 10 * self.state.settings.queue_heartbeat_seconds)
            self.state.cache.announce_model(model_id, ttl=ttl)

    def hand_back(self) -> int:
        """Put the jobs still in hand back in the queue; returns how many.

        Their runs go on until the process exits but can record nothing any more; each
        job is ``queued`` again with the attempt given back, and sent again.
        """
        self._handing_back.set()
        with self._in_hand_lock:  # no more lease renewals for them: they go back
            runs = dict(self._in_hand)
            self._in_hand.clear()
        count = 0
        for job_id, token in runs.items():
            try:
                job = self.state.store.requeue(job_id, token, uncount=True)
            except MlsharpError as error:  # the queue finds it again (requeued at start)
                log.warning("job %s: could not hand it back (%s)", job_id, error)
                continue
            if job is None:
                continue  # it ended meanwhile
            count += 1
            self.state.metrics.handed_back.inc()
            self.state.notifier.notify()
            self.queue.send(job)
            log.warning("job %s: the drain time ran out; handed back to the queue", job_id)
        return count

    # -- one run -------------------------------------------------------------------------

    def run(self, lease: Lease) -> None:
        """Run one leased job to its end, recording the outcome (fenced by the lease)."""
        state, job, token = self.state, lease.job, lease.token
        with self._in_hand_lock:
            self._in_hand[job.id] = token
        state.notifier.notify()
        state.health.started(job.id)
        limit = state.settings.job_max_attempts
        log.info("job %s: run %d of at most %d", job.id, token, limit)
        started = time.perf_counter()
        try:
            self._delay_for_tests()
            outputs, timings, cached = self._execute(lease)
            # Sizes and splat count before an upload drops the local copies.
            stats = result_stats(state, job, outputs, self._splats.pop(job.id, None))
            if not cached:  # cached ones were published when they were linked
                self._check_still_running(job.id)
                state.storage.commit_outputs(job.id, outputs)
        except LeaseLost:
            state.metrics.fenced.inc()
            log.warning("job %s: run %d was superseded; its work is discarded", job.id, token)
            self._forget_if_deleted(job.id)
        except JobCanceled:
            self._complete(lease, JobStatus.CANCELED, started, stage="canceled")
        except StorageFull as error:  # clear, and a retry would most likely fail the same way
            self._fail(lease, started, error)
        except (ServiceUnavailable, StorageError) as error:  # transient: retried below
            self._retry_or_fail(lease, started, error)
        except MlsharpError as error:  # poison input: a retry would fail the same way
            self._fail(lease, started, error)
        except self.queue.time_limit_errors:
            seconds = state.settings.job_time_limit_seconds
            err = {"code": "job_timeout", "message": f"the job ran longer than {seconds:g}s"}
            self._complete(lease, JobStatus.FAILED, started, stage="failed", error=err)
        except Exception as error:
            known = storage_error(error, "the job's files")  # e.g. a full disk
            if isinstance(known, StorageFull):
                self._fail(lease, started, known)
            else:  # transient or a bug: bounded retries, the last error kept
                log.exception("job %s: run %d failed", job.id, token)
                self._retry_or_fail(lease, started, error)
        else:
            timings["total"] = time.perf_counter() - started
            self._complete(
                lease,
                JobStatus.SUCCEEDED,
                started,
                stage="done",
                progress=1.0,
                outputs=outputs,
                timings=timings,
                cached=cached,
                stats=stats,
                error=None,
            )
        finally:
            state.health.ended()
            self._splats.pop(job.id, None)
            with self._in_hand_lock:
                self._in_hand.pop(job.id, None)
            engine = state.model.engine
            if engine is not None:
                engine.memory_guard.after_job()  # reclaims cached memory above a threshold

    def _delay_for_tests(self) -> None:
        # Short sleeps, like the model's many Python-level steps, let a time limit
        # interrupt the run.
        until = time.monotonic() + self.debug_delay
        while time.monotonic() < until:
            time.sleep(0.05)

    def _execute(self, lease: Lease) -> tuple[dict[str, str], dict[str, float], bool]:
        """The library path; returns ``(outputs, timings, cached)``."""
        from mlsharp.imaging import load_image

        state, job = self.state, lease.job
        timings: dict[str, float] = {}
        start = time.perf_counter()
        image = load_image(
            state.storage.input_path(job.id, job.input_suffix),
            focal_mm=job.focal_mm,
            max_pixels=state.settings.max_pixels,
            # Not the shared decode budget: worker threads are few, and a job must not
            # fail because uploads were being decoded meanwhile.
            max_decode_bytes=state.settings.max_decode_bytes,
            name=job.input_name,
        )
        if image.focal_warning:  # an absurd EXIF focal length: the default was used
            log.warning("job %s: %s", job.id, image.focal_warning)
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
                return link_cached_outputs(state, job, hit), timings, True
        if job.panorama:
            gaussians = self._predict_panorama(lease, image)
        else:
            gaussians = self._predictor().predict(image, on_stage=lambda s: self._advance(lease, s))
        stage_times = gaussians.metadata["timings"]
        timings.update(
            preprocess=stage_times.preprocess,
            inference=stage_times.inference,
            postprocess=stage_times.postprocess,
            transfer=stage_times.transfer,
        )
        if job.panorama:
            timings.update(cut=stage_times.extra["cut"], merge=stage_times.extra["merge"])
        self._advance(lease, "write")
        outputs, timings["write"] = self._write(job, gaussians)
        if key is not None:
            out_dir = state.storage.output_dir(job.id)
            state.cache.put(key, {fmt: out_dir / name for fmt, name in outputs.items()})
        return outputs, timings, False

    def _predict_panorama(self, lease: Lease, image: Any) -> Any:
        """The panorama's views through the batcher (they share forwards with other jobs'
        photos), merged into one scene; the job's stage follows the views."""
        from mlsharp.panorama import panorama_kind, predict_panorama

        engine = self.state.model.engine
        assert engine is not None  # runs start only once the model is loaded
        kind = panorama_kind(image, True)  # checked when it was submitted
        assert kind is not None
        return predict_panorama(
            self._predictor(),
            image,
            kind=kind,
            max_side=engine.internal_resolution,
            progress=lambda stage, fraction: self._advance(lease, stage),
        )

    def _predictor(self) -> Batcher:
        """The engine behind a :class:`Batcher`: concurrent runs share forwards (up to the
        engine's suggested batch size; one at a time with one thread)."""
        with self._batcher_lock:
            if self._batcher is None:
                engine = self.state.model.engine
                assert engine is not None  # runs start only once the model is loaded
                self._batcher = Batcher(
                    engine,
                    engine.suggested_batch_size,
                    on_batch=self.state.metrics.batch_size.observe,
                )
            return self._batcher

    def _write(self, job: JobRecord, gaussians: Any) -> tuple[dict[str, str], float]:
        """Write the job's formats (and the preview) of the scene thinned out as the job
        asks; a full disk is ``StorageFull``."""
        from mlsharp import splat
        from mlsharp.splat.density import Density

        start = time.perf_counter()
        gaussians = splat.reduce_density(gaussians, Density.checked(**job.density))
        self._splats[job.id] = len(gaussians)
        out_dir = self.state.storage.output_dir(job.id)
        outputs = {}
        for fmt in job.formats:
            name = output_name(job, fmt)
            try:
                splat.write(gaussians, out_dir / name, fmt)  # atomic per file
            except OSError as error:
                full = storage_error(error, f"the result file {name}")
                if full is None:
                    raise
                raise full from error
            outputs[fmt] = name
        name = output_name(job, PREVIEW_FORMAT)  # an extra output, not one of job.formats
        if self.state.settings.previews and write_preview(gaussians, out_dir / name):
            outputs[PREVIEW_FORMAT] = name
        return outputs, time.perf_counter() - start

    def _advance(self, lease: Lease, stage: str) -> None:
        """Fenced stage update; ``LeaseLost`` or :class:`JobCanceled` stop the run."""
        if self._handing_back.is_set():
            raise LeaseLost(lease.job_id)
        job = self._persist(
            lambda: self.state.store.advance(lease.job_id, lease.token, stage),
            f"updating job {lease.job_id}",
        )
        self.state.notifier.notify()
        if job.cancel_requested:
            raise JobCanceled()

    def _check_still_running(self, job_id: str) -> None:
        """``LeaseLost`` if the job ended meanwhile (another run's result must not be
        overwritten by this one's files) or the drain handed it back."""
        if self._handing_back.is_set():
            raise LeaseLost(job_id)
        job = self._persist(lambda: self.state.store.get(job_id), f"reading job {job_id}")
        if job is None or job.status is not JobStatus.RUNNING:
            raise LeaseLost(job_id)

    # -- outcomes ------------------------------------------------------------------------

    def _fail(self, lease: Lease, started: float, error: MlsharpError) -> None:
        err = {"code": error.code, "message": str(error)}
        self._complete(lease, JobStatus.FAILED, started, stage="failed", error=err)

    def _retry_or_fail(self, lease: Lease, started: float, error: Exception) -> None:
        """Queue the job again with the error kept, to run after a backoff, or fail it
        when this was its last allowed run."""
        settings, job, token = self.state.settings, lease.job, lease.token
        err = {"code": "internal_error", "message": f"run {token} failed ({type(error).__name__})"}
        if isinstance(error, MlsharpError):
            err = {"code": error.code, "message": f"run {token} failed: {error}"}
        if token >= settings.job_max_attempts:
            self._complete(lease, JobStatus.FAILED, started, stage="failed", error=err)
            return
        if self._handing_back.is_set():
            return
        backoff = settings.job_retry_backoff_seconds * 2 ** (token - 1)
        requeued = self._persist(
            lambda: self.state.store.requeue(job.id, token, delay_seconds=backoff, error=err),
            f"queueing job {job.id} again",
        )
        self.state.notifier.notify()
        if requeued is not None:
            self.state.metrics.retries.inc()
            self.queue.send(requeued, backoff)
            log.info("job %s: queued again, next run in %.1fs", job.id, backoff)

    def _complete(self, lease: Lease, status: JobStatus, started: float, **changes: Any) -> None:
        """The fenced final transition (its outbox entry in the same commit)."""
        state, job = self.state, lease.job
        if self._handing_back.is_set():  # the job went back to the queue
            return
        final = self._persist(
            lambda: state.store.finish(
                job.id, lease.token, status=status, finished_at=time.time(), **changes
            ),
            f"recording the outcome of job {job.id}",
        )
        elapsed = time.perf_counter() - started
        state.storage.release(job.id)  # object storage: drop this worker's working copies
        if final is None:
            state.metrics.fenced.inc()
            log.warning(
                "job %s: run %d was superseded; its outcome is dropped", job.id, lease.token
            )
            self._forget_if_deleted(job.id)
            return
        state.webhooks.wake()  # its outbox entry is waiting
        state.metrics.job_seconds.labels(status.value).observe(elapsed)
        self._ended(final)
        message = f" ({final.error['message']})" if final.error else ""
        log.info("job %s %s in %.2fs%s", job.id, status.value, elapsed, message)

    def _ended(self, job: JobRecord) -> None:
        """Count and announce a job that ended."""
        self.state.notifier.notify()
        self.state.metrics.jobs_finished.labels(job.status.value).inc()
        if job.status is JobStatus.SUCCEEDED and not job.cached:
            self.state.metrics.observe_stages(job.timings)

    def _forget_if_deleted(self, job_id: str) -> None:
        """Delete the files a run wrote for a job deleted while it ran."""
        try:
            if self.state.store.get(job_id) is None:
                self.state.storage.delete_job(job_id)
        except MlsharpError as error:
            log.warning("job %s: could not check whether it was deleted (%s)", job_id, error)

    def _persist(self, write: Callable[[], T], what: str) -> T:
        """``write()``, tried again after a pause while the store cannot be used (a full
        disk, Redis away), so no outcome is lost; readiness shows why meanwhile.

        Anything else is raised at once, and so is the last failure once the runner stops.
        """
        waits = pauses()
        while True:
            try:
                result = write()
            except (ServiceUnavailable, StorageError) as error:
                if self._stopping.is_set():
                    raise
                pause = next(waits)
                problem = f"job store unavailable while {what} ({describe(error)})"
                log.error("%s; retrying in %.1fs", problem, pause)
                self.state.health.failing(problem)
                self._stopping.wait(pause)
                continue
            self.state.health.working()
            return result


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
