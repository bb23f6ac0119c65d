"""``QueueRunner``: runs jobs delivered by the task queue (``mlsharp worker``, or
``mlsharp serve --queue URL --workers N``).

It reuses the embedded runner's library path (:class:`~mlsharp.service.worker.JobRunner`:
decode, cache lookup, ``Engine.predict``, writing the formats) and replaces how a job is
taken and finished:

    delivery ─► store.start_attempt (lease token, lease key) ─► run ─► storage.commit_outputs
             ─► store.finish(token) + webhook deliveries in one transaction

* **Duplicates** (a message requeued while its run is alive, a message the reconciler
  sent again) are skipped: the job's lease is alive, or it has ended. A ``running`` job
  whose lease is gone is taken over only if the lease stays gone for two heartbeats
  (a run that outlived a Redis outage renews it within one).
* **Poison inputs** (any ``MlsharpError``: an undecodable upload, a too-large image) fail
  at once; retrying cannot help.
* **Other errors** (a CUDA OOM, a full disk, a bug) put the job back to ``queued`` with
  the error kept and send it again with a delay (backoff), until ``job_max_attempts``.
  The ``queued`` state commits before the send; if the send fails the reconciler sends
  it (``reconcile.py``).
* **Time limit**: a run longer than ``job_time_limit_seconds`` is interrupted by the
  queue's time-limit middleware and fails (``job_timeout``); inference is interrupted at
  the next Python-level step, never inside a kernel.
* **Fencing**: a run whose job another run took over stops at its next stage update
  once the job has ended, and may only record a success while none is recorded.
* **Drain**: on stop, the job in hand has ``drain`` seconds to finish; then it is handed
  back (``queued`` again, the attempt not counted, its message sent again).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import Counter, Histogram

from mlsharp.errors import MlsharpError, ServiceUnavailable
from mlsharp.service.distributed.job_store import (
    BUSY,
    EXHAUSTED,
    ORPHAN,
    SKIP,
    LeaseLost,
    RedisJobStore,
)
from mlsharp.service.distributed.queue import Heartbeat, JobQueue
from mlsharp.service.distributed.reconcile import Reconciler, outcome_deliveries
from mlsharp.service.distributed.redis_conn import (
    call_with_retry,
    connection_errors,
    wait_for_redis,
)
from mlsharp.service.jobs import JobRecord, JobStatus
from mlsharp.service.state import ServiceState
from mlsharp.service.worker import JobCanceled, JobRunner

log = logging.getLogger("mlsharp.worker")


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
        self.skipped = Counter(
            "mlsharp_worker_deliveries_skipped",
            "Deliveries not run: the job ended (finished) or another live run holds it (busy)",
            ["reason"],
            registry=registry,
        )
        self.reconciled = Counter(
            "mlsharp_queue_reconciled",
            "Jobs without a queue message found by this worker's sweeps: resent or failed",
            ["action"],
            registry=registry,
        )
        self.handed_back = Counter(
            "mlsharp_worker_jobs_handed_back",
            "Jobs put back in the queue because the drain time ran out on shutdown",
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
        settings = state.settings
        self.queue = queue
        self.debug_delay = debug_delay
        self.beat_seconds = max(0.2, queue.heartbeat_ms / 5000)
        self.heartbeat = Heartbeat(queue, interval=self.beat_seconds, on_beat=self._beat)
        self.worker_metrics = WorkerMetrics(state.metrics.registry)
        self._deliveries = outcome_deliveries(state.webhooks, settings.public_url or "")
        self.reconciler = Reconciler(
            self.store,
            queue,
            self._deliveries,
            grace_seconds=settings.queue_grace_seconds,
            on_action=lambda action: self.worker_metrics.reconciled.labels(action).inc(),
        )
        self._local = threading.local()
        self._worker: Any = None
        self._boot_thread: threading.Thread | None = None
        self.busy = threading.Event()
        #: The runs this process holds: job id -> lease token (renewed on each beat).
        self._in_hand: dict[str, int] = {}
        self._in_hand_lock = threading.Lock()
        #: Set once the drain time ran out: runs still going must not record anything.
        self._handing_back = threading.Event()

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
        self.reconciler.start()
        self._worker = self.queue.consume(self.handle, threads=self.thread_count)
        log.info("consuming jobs from the queue (%d thread(s))", self.thread_count)

    def stop(self, timeout: float = 30.0) -> None:
        """Drain: finish the job in hand (up to ``timeout``), hand back prefetched ones;
        a job still running then is handed back to the queue (see :meth:`hand_back`)."""
        self._stop.set()
        if self._boot_thread is not None:
            self._boot_thread.join()
        if self._worker is not None:
            self._worker.stop(timeout=int(timeout * 1000))
            self._worker = None
        self.hand_back()
        self.reconciler.stop()
        self.heartbeat.stop()

    def hand_back(self) -> int:
        """Put the jobs still in hand back in the queue; returns how many.

        Their runs go on until the process exits but can record nothing any more; each
        job is ``queued`` again with the attempt given back, and its message is sent
        again (if that send fails, the reconciler sends it).
        """
        self._handing_back.set()
        with self._in_hand_lock:  # no more lease renewals for them: they go back
            runs = dict(self._in_hand)
            self._in_hand.clear()
        count = 0
        for job_id, token in runs.items():
            job = call_with_retry(
                lambda j=job_id, t=token: self.store.requeue(j, t, uncount=True),
                what=f"handing job {job_id} back",
                give_up=10,
            )
            if job is None:
                continue  # it ended meanwhile
            count += 1
            self.worker_metrics.handed_back.inc()
            self.state.notifier.notify()
            self._send(job)
            log.warning("job %s: the drain time ran out; handed back to the queue", job_id)
        return count

    def _send(self, job: JobRecord, delay: float = 0.0) -> None:
        try:
            self.queue.enqueue(job, delay)
        except connection_errors() as error:  # the reconciler sends it later
            log.warning("job %s: could not send it to the queue now (%s)", job.id, error)

    def _beat(self) -> None:
        """On every heartbeat: renew the leases of the runs in hand, say which model
        this worker runs (API instances look in the shared cache with it)."""
        with self._in_hand_lock:
            runs = dict(self._in_hand)
        self.store.renew_leases(runs)
        announce = getattr(self.state.cache, "announce_model", None)
        model_id = self.state.model.model_id
        if announce is not None and model_id is not None:
            announce(model_id, ttl=max(60.0, 10 * self.queue.heartbeat_ms / 1000))

    # -- one delivery --------------------------------------------------------------------

    def handle(self, job_id: str) -> None:
        """Run one delivery of ``job_id`` (called on a Dramatiq worker thread)."""
        outcome, job = self._start(job_id, take_over=False)
        if outcome == ORPHAN:
            outcome, job = self._confirm_orphan(job_id)
        if outcome in (SKIP, BUSY):
            reason = "busy" if outcome == BUSY else "finished"
            self.worker_metrics.skipped.labels(reason).inc()
            if outcome == BUSY:
                log.info("job %s: delivery skipped (a live run holds it)", job_id)
            else:
                status = job.status.value if job else "gone"
                log.info("job %s: delivery skipped (%s)", job_id, status)
            return
        assert job is not None
        if outcome == EXHAUSTED:  # failed, its webhook staged in the same commit
            log.warning("job %s failed: %s", job_id, (job.error or {}).get("message"))
            self.state.notifier.notify()
            self._count_finished(job)
            return
        self.busy.set()
        try:
            self._run(job)
        finally:
            self.busy.clear()

    def _start(self, job_id: str, *, take_over: bool) -> tuple[str, JobRecord | None]:
        settings = self.state.settings
        return call_with_retry(
            lambda: self.store.start_attempt(
                job_id,
                settings.job_max_attempts,
                take_over=take_over,
                deliveries=self._deliveries,
            ),
            what=f"starting job {job_id}",
        )

    def _confirm_orphan(self, job_id: str) -> tuple[str, JobRecord | None]:
        """The job is ``running`` without a lease: its run died, or it is alive and has
        not renewed its lease since Redis came back. Watch for two heartbeats (plus a
        second for reconnecting) before taking over."""
        deadline = time.monotonic() + 2 * self.beat_seconds + 1.0
        while time.monotonic() < deadline:
            time.sleep(self.beat_seconds / 2)
            outcome, job = self._start(job_id, take_over=False)
            if outcome != ORPHAN:
                return outcome, job
        log.info("job %s: its run holds no lease any more; taking over", job_id)
        return self._start(job_id, take_over=True)

    def _run(self, job: JobRecord) -> None:
        from dramatiq.middleware.time_limit import TimeLimitExceeded

        settings = self.state.settings
        token = job.attempts
        self._local.token = token
        with self._in_hand_lock:
            self._in_hand[job.id] = token
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
            outputs, timings, cached, stats = self._execute(job)
            commit = getattr(self.state.storage, "commit_outputs", None)
            if commit is not None and not cached:  # cached ones: done by link_cached_outputs
                self._check_still_running(job.id)
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
                stats=stats,
                error=None,
            )
        finally:
            with self._in_hand_lock:
                self._in_hand.pop(job.id, None)

    def _check_still_running(self, job_id: str) -> None:
        """LeaseLost if the job ended meanwhile (another run's result must not be
        overwritten by this one's files) or the drain handed it back."""
        if self._handing_back.is_set():
            raise LeaseLost(job_id)
        job = call_with_retry(lambda: self.store.get(job_id), what=f"reading job {job_id}")
        if job is None or job.status is not JobStatus.RUNNING:
            raise LeaseLost(job_id)

    def _retry_or_fail(self, job: JobRecord, token: int, started: float, error: Exception) -> None:
        """Queue the job again with the error kept and send it with a backoff delay, or
        fail it when this was its last allowed run."""
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
        if self._handing_back.is_set():
            return
        backoff = settings.job_retry_backoff_seconds * 2 ** (token - 1)
        requeued = call_with_retry(
            lambda: self.store.requeue(job.id, token, delay_seconds=backoff, error=err),
            what=f"requeueing job {job.id}",
        )
        self.state.notifier.notify()
        if requeued is not None:
            self.worker_metrics.retries.inc()
            self._send(requeued, backoff)
            log.info("job %s: queued again, next run in %.1fs", job.id, backoff)

    def _advance(self, job_id: str, stage: str) -> None:
        """Fenced stage update; LeaseLost / JobCanceled stop the run."""
        if self._handing_back.is_set():
            raise LeaseLost(job_id)
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
        if self._handing_back.is_set():  # the job went back to the queue
            return
        final = call_with_retry(
            lambda: self.store.finish(
                job.id, token, self._deliveries, status=status, finished_at=time.time(), **changes
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
