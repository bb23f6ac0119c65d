"""``QueueRunner``: runs jobs delivered by the task queue (``mlsharp worker``, or
``mlsharp serve --queue URL --workers N``).

It reuses the embedded runner's library path (:class:`~mlsharp.service.worker.JobRunner`:
decode, cache lookup, ``Engine.predict``, writing the formats) and replaces how a job is
taken and finished:

    delivery ─► store.start_attempt (lease token) ─► run ─► storage.commit_outputs
             ─► store.finish(token) + webhook deliveries in one transaction

* **Poison inputs** (any ``MlsharpError``: an undecodable upload, a too-large image) fail
  at once; retrying cannot help.
* **Other errors** (a CUDA OOM, a full disk, a bug) put the job back to ``queued`` with
  the error kept and ask the queue for a retry with backoff, until ``job_max_attempts``.
* **Time limit**: a run longer than ``job_time_limit_seconds`` is interrupted by the
  queue's time-limit middleware and fails (``job_timeout``); inference is interrupted at
  the next Python-level step, never inside a kernel.
* **Fencing**: a run whose lease was taken over (it looked dead and the job was
  redelivered) stops at its next stage update and discards its work.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import Counter, Histogram

from mlsharp.errors import MlsharpError, ServiceUnavailable
from mlsharp.service.distributed.job_store import EXHAUSTED, SKIP, LeaseLost, RedisJobStore
from mlsharp.service.distributed.queue import Heartbeat, JobQueue
from mlsharp.service.distributed.redis_conn import call_with_retry, wait_for_redis
from mlsharp.service.jobs import JobRecord, JobStatus
from mlsharp.service.state import ServiceState
from mlsharp.service.views import job_event_data
from mlsharp.service.worker import JobCanceled, JobRunner

log = logging.getLogger("mlsharp.worker")

_EVENTS = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed"}


class WorkerMetrics:
    """Queue-side figures of one worker process, in the state's registry."""

    def __init__(self, registry: Any) -> None:
        self.job_seconds = Histogram(
            "mlsharp_worker_job_duration_seconds",
            "Wall time of one run of a job on this worker, by outcome",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=registry,
        )
        self.retries = Counter(
            "mlsharp_worker_job_retries",
            "Runs that failed and were queued again",
            registry=registry,
        )
        self.fenced = Counter(
            "mlsharp_worker_runs_fenced",
            "Runs discarded because a newer run of the same job took over",
            registry=registry,
        )


class QueueRunner(JobRunner):
    """Consumes the task queue with ``threads`` threads (one per device: keep it at 1)."""

    def __init__(
        self,
        state: ServiceState,
        queue: JobQueue,
        threads: int = 1,
        *,
        debug_delay: float = 0.0,
    ) -> None:
        super().__init__(state, threads=threads)
        self.queue = queue
        self.debug_delay = debug_delay
        self.heartbeat = Heartbeat(queue, interval=max(0.2, queue.heartbeat_ms / 5000))
        self.worker_metrics = WorkerMetrics(state.metrics.registry)
        self._local = threading.local()
        self._worker: Any = None
        self._boot_thread: threading.Thread | None = None
        self.busy = threading.Event()

    @property
    def store(self) -> RedisJobStore:
        """The state's job store (always Redis in this mode)."""
        return self.state.store  # type: ignore[return-value]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start consuming once the model is loaded and Redis answers (in the background)."""
        self._boot_thread = threading.Thread(target=self._boot, name="mlsharp-queue-boot")
        self._boot_thread.start()

    def _boot(self) -> None:
        state = self.state
        state.model.ready.wait()
        if state.model.engine is None:
            log.error("not consuming the queue: the model did not load (%s)", state.model.error)
            return
        assert state.settings.queue is not None
        if not wait_for_redis(self.queue.broker.client, state.settings.queue, stop=self._stop):
            return
        self.heartbeat.start()
        self._worker = self.queue.consume(self.handle, threads=self.thread_count)
        log.info("consuming jobs from the queue (%d thread(s))", self.thread_count)

    def stop(self, timeout: float = 30.0) -> None:
        """Drain: finish the job in hand (up to ``timeout``), hand back prefetched ones."""
        self._stop.set()
        if self._boot_thread is not None:
            self._boot_thread.join()
        if self._worker is not None:
            self._worker.stop(timeout=int(timeout * 1000))
            self._worker = None
        self.heartbeat.stop()

    # -- one delivery --------------------------------------------------------------------

    def handle(self, job_id: str) -> None:
        """Run one delivery of ``job_id`` (called on a Dramatiq worker thread)."""
        settings = self.state.settings
        outcome, job = call_with_retry(
            lambda: self.store.start_attempt(job_id, settings.job_max_attempts),
            what=f"starting job {job_id}",
        )
        if outcome == SKIP:
            log.info("job %s: delivery skipped (%s)", job_id, job.status.value if job else "gone")
            return
        assert job is not None
        if outcome == EXHAUSTED:
            log.warning("job %s failed: %s", job_id, (job.error or {}).get("message"))
            self._count_finished(job)
            self._publish_late(job)
            return
        self.busy.set()
        try:
            self._run(job)
        finally:
            self.busy.clear()

    def _run(self, job: JobRecord) -> None:
        from dramatiq.middleware.time_limit import TimeLimitExceeded

        settings = self.state.settings
        token = job.attempts
        self._local.token = token
        self.state.notifier.notify()
        log.info("job %s: run %d of at most %d", job.id, token, settings.job_max_attempts)
        started = time.perf_counter()
        try:
            if self.debug_delay:
                # Test hook: a window to kill a busy worker. Short sleeps, like the model's
                # many Python-level steps, let the time limit interrupt it.
                until = time.monotonic() + self.debug_delay
                while time.monotonic() < until:
                    time.sleep(0.05)
            outputs, timings, cached = self._execute(job)
            commit = getattr(self.state.storage, "commit_outputs", None)
            if commit is not None and not cached:  # cached ones: done by link_cached_outputs
                commit(job.id, outputs)
        except LeaseLost:
            self.worker_metrics.fenced.inc()
            log.warning("job %s: run %d was superseded; its work is discarded", job.id, token)
        except JobCanceled:
            self._complete(job, token, JobStatus.CANCELED, started, stage="canceled")
        except ServiceUnavailable as error:  # Redis or S3 away: transient, retried below
            self._retry_or_fail(job, token, started, error)
        except MlsharpError as error:  # poison input: a retry would fail the same way
            err = {"code": error.code, "message": str(error)}
            self._complete(job, token, JobStatus.FAILED, started, stage="failed", error=err)
        except TimeLimitExceeded:
            limit = settings.job_time_limit_seconds
            err = {"code": "job_timeout", "message": f"the job ran longer than {limit:g}s"}
            self._complete(job, token, JobStatus.FAILED, started, stage="failed", error=err)
        except Exception as error:  # transient or a bug: bounded retries, last error kept
            log.exception("job %s: run %d failed", job.id, token)
            self._retry_or_fail(job, token, started, error)
        else:
            timings["total"] = time.perf_counter() - started
            self._complete(
                job,
                token,
                JobStatus.SUCCEEDED,
                started,
                stage="done",
                progress=1.0,
                outputs=outputs,
                timings=timings,
                cached=cached,
                error=None,
            )

    def _retry_or_fail(self, job: JobRecord, token: int, started: float, error: Exception) -> None:
        """Queue the job again with the error kept (raises ``dramatiq.Retry``), or fail it
        when this was its last allowed run."""
        from dramatiq import Retry

        settings = self.state.settings
        err = {
            "code": "internal_error",
            "message": f"run {token} failed ({type(error).__name__})",
        }
        if isinstance(error, ServiceUnavailable):
            err = {"code": error.code, "message": f"run {token} failed: {error}"}
        if token >= settings.job_max_attempts:
            self._complete(job, token, JobStatus.FAILED, started, stage="failed", error=err)
            return
        requeued = call_with_retry(
            lambda: self.store.finish(
                job.id, token, status=JobStatus.QUEUED, stage="queued", progress=0.0, error=err
            ),
            what=f"requeueing job {job.id}",
        )
        self.state.notifier.notify()
        if requeued is not None:
            self.worker_metrics.retries.inc()
            backoff = settings.job_retry_backoff_seconds * 2 ** (token - 1)
            log.info("job %s: queued again, next run in %.1fs", job.id, backoff)
            raise Retry(delay=int(backoff * 1000))

    def _advance(self, job_id: str, stage: str) -> None:
        """Fenced stage update; LeaseLost / JobCanceled stop the run."""
        token = self._local.token
        job = call_with_retry(
            lambda: self.store.advance(job_id, token, stage), what=f"updating job {job_id}"
        )
        self.state.notifier.notify()
        if job.cancel_requested:
            raise JobCanceled()

    def _complete(
        self, job: JobRecord, token: int, status: JobStatus, started: float, **changes: Any
    ) -> None:
        """The fenced final transition, with its webhook deliveries in the same commit."""
        state = self.state
        event = _EVENTS.get(status)
        base = state.settings.public_url or ""

        def deliveries(pipe: Any, final: JobRecord) -> None:
            if event is not None:
                state.webhooks.stage(  # type: ignore[attr-defined]
                    pipe, event, job_event_data(final, base), final.owner, f"{final.id}:{event}"
                )

        final = call_with_retry(
            lambda: self.store.finish(
                job.id, token, deliveries, status=status, finished_at=time.time(), **changes
            ),
            what=f"finishing job {job.id}",
        )
        elapsed = time.perf_counter() - started
        release = getattr(state.storage, "release", None)
        if release is not None:  # object storage: drop this worker's working copies
            release(job.id)
        if final is None:
            self.worker_metrics.fenced.inc()
            log.warning("job %s: run %d was superseded; its outcome is dropped", job.id, token)
            return
        state.notifier.notify()
        self.worker_metrics.job_seconds.labels(status.value).observe(elapsed)
        self._count_finished(final)
        log.info(
            "job %s %s in %.2fs%s",
            job.id,
            status.value,
            elapsed,
            f" ({final.error['message']})" if final.error else "",
        )

    def _count_finished(self, job: JobRecord) -> None:
        self.state.metrics.jobs_finished.labels(job.status.value).inc()
        if job.status is JobStatus.SUCCEEDED and not job.cached:
            self.state.metrics.observe_stages(job.timings)

    def _publish_late(self, job: JobRecord) -> None:
        event = _EVENTS.get(job.status)
        if event is not None:
            data = job_event_data(job, self.state.settings.public_url or "")
            self.state.webhooks.publish(  # type: ignore[call-arg]
                event, data, job.owner, dedupe_key=f"{job.id}:{event}"
            )
