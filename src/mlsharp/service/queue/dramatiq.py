"""``DramatiqQueue``: the task queue of the scale-out mode (Dramatiq on Redis).

Why Dramatiq (docs/deployment.md has the comparison): its Redis broker keeps every
fetched message in a per-worker "unacked" set and moves the messages of a worker whose
heartbeat went silent back to the queue, so a job whose worker died (kill -9, OOM, power
loss) runs again elsewhere; retries with backoff and per-message time limits are
middleware; and its ``Worker`` runs in threads of *our* process, so the model loads once
and nothing forks after torch ran (Celery's prefork pool and RQ's forking worker hang).

The message carries only the job id; the job store holds the truth. Every worker sends
a heartbeat (and runs the broker's requeue maintenance) every ``heartbeat/5`` seconds from
its own thread, also while a long job runs, so only dead workers lose their messages.
Dramatiq stamps heartbeats and delays with each machine's own clock: a worker whose
clock runs ahead by more than the heartbeat timeout, or the first worker back after a
Redis outage longer than it, requeues the messages of workers that are alive. Those
duplicates are harmless: the job store skips a delivery whose job has a live run lease
(``transitions.BUSY``).

A message can also be lost (a send while Redis is down, a process killed between
storing a job and sending it) or dead-lettered; :meth:`JobQueue.message_states` lets the
reconciler (``reconcile.py``) find the jobs that have no message any more.

A delivery becomes a run only through the store's ``start_attempt`` (the lease token, the
lease key): duplicates (a message requeued while its run is alive, one the reconciler
sent again) are skipped, and a ``running`` job whose lease is gone is taken over only if
the lease stays gone for two heartbeats (a run that outlived a Redis outage renews it
within one). A run longer than ``job_time_limit_seconds`` is interrupted by the queue's
time-limit middleware at the next Python-level step (never inside a kernel).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mlsharp.config import Settings
from mlsharp.errors import ServiceUnavailable
from mlsharp.service.jobs import transitions
from mlsharp.service.jobs.model import JobRecord, Lease
from mlsharp.service.jobs.redis import RedisJobStore
from mlsharp.service.metrics import Metrics
from mlsharp.service.optional import require
from mlsharp.service.queue.reconcile import Reconciler
from mlsharp.service.redis_conn import call_with_retry, connection_errors, wait_for_redis

log = logging.getLogger("mlsharp.distributed")

ACTOR_NAME = "mlsharp_run_job"
QUEUE_NAME = "jobs"
#: The broker's scale for ``maintenance_chance``: at this value every call does maintenance.
_ALWAYS = 1_000_000


class TaskBroker:
    """The Dramatiq broker and the job actor; ``enqueue`` on submit, ``consume`` in workers."""

    def __init__(self, settings: Settings, client: Any) -> None:
        dramatiq = require("dramatiq")
        from dramatiq.brokers.redis import RedisBroker
        from dramatiq.middleware import Retries, TimeLimit

        self.settings = settings
        self.heartbeat_ms = int(settings.queue_heartbeat_seconds * 1000)
        self.max_retries = 3 * settings.job_max_attempts + 5
        self.broker = RedisBroker(
            client=client,
            namespace=f"{settings.queue_namespace}:queue",
            heartbeat_timeout=self.heartbeat_ms,
            # Requeue checks are one sorted-set range read: cheap enough to run on every
            # fetch, so a dead worker's job is back in the queue within ~one heartbeat.
            maintenance_chance=_ALWAYS,
            middleware=[
                TimeLimit(time_limit=int(settings.job_time_limit_seconds * 1000), interval=500),
                # The job store bounds the runs (job_max_attempts); the queue's own retry
                # count only has to outlast it (a retry may also follow a Redis error).
                Retries(
                    max_retries=self.max_retries,
                    min_backoff=max(1, int(settings.job_retry_backoff_seconds * 1000)),
                    max_backoff=3_600_000,
                ),
            ],
        )
        self._handler: Callable[[str], None] | None = None
        self.actor = dramatiq.actor(
            self._dispatch,
            broker=self.broker,
            actor_name=ACTOR_NAME,
            queue_name=QUEUE_NAME,
            max_retries=self.max_retries,
        )

    def _dispatch(self, job_id: str) -> None:
        if self._handler is None:  # an API-only process never consumes
            raise RuntimeError("this process does not run jobs")
        self._handler(job_id)

    def enqueue(self, job: JobRecord, delay_seconds: float = 0.0) -> None:
        """Put a stored, queued job on the queue (after ``delay_seconds``)."""
        if delay_seconds > 0:
            self.actor.send_with_options(args=(job.id,), delay=int(delay_seconds * 1000))
        else:
            self.actor.send(job.id)

    def message_states(self, grace_seconds: float) -> dict[str, str]:
        """``{job id: "live" | "dead"}`` for every job with a message in the broker.

        *live*: waiting in the queue, fetched by a worker and not acknowledged yet (a dead
        worker's are requeued by the broker's maintenance), or delayed with its due time
        less than ``grace_seconds`` ago (an overdue one sits in a worker's memory that
        will not release it). *dead*: dead-lettered (the queue's retries ran out).

        Reads the Redis broker's hashes of message bodies (``<ns>:<queue>.msgs``,
        ``.DQ.msgs``, ``.XQ.msgs``, Dramatiq 2's layout; tests/distributed checks it).
        """
        from dramatiq import Message

        ns = self.broker.namespace
        client = self.broker.client
        now_ms = time.time() * 1000
        states: dict[str, str] = {}
        for raw in client.hvals(f"{ns}:{QUEUE_NAME}.XQ.msgs"):
            states[Message.decode(raw).args[0]] = "dead"
        for raw in client.hvals(f"{ns}:{QUEUE_NAME}.DQ.msgs"):
            message = Message.decode(raw)
            if message.options.get("eta", 0) + grace_seconds * 1000 > now_ms:
                states[message.args[0]] = "live"
        for raw in client.hvals(f"{ns}:{QUEUE_NAME}.msgs"):
            states[Message.decode(raw).args[0]] = "live"
        return states

    def depth(self) -> int:
        """Messages waiting in the queue (not counting delayed retries)."""
        return int(self.broker.do_qsize(QUEUE_NAME))

    def heartbeat(self) -> None:
        """Tell the broker this process is alive, and requeue messages of dead workers."""
        self.broker.do_qsize(QUEUE_NAME)

    def consume(self, handler: Callable[[str], None], threads: int = 1) -> Any:
        """Start a Dramatiq ``Worker`` calling ``handler(job_id)``; returns it (``stop()``).

        One thread per worker process and a prefetch of one: a busy worker holds at most
        the job it runs, so idle workers get the next one.
        """
        from dramatiq import Worker

        self._handler = handler
        worker = Worker(self.broker, worker_threads=threads, worker_timeout=500)
        worker.queue_prefetch = threads
        worker.delay_prefetch = 100
        self.broker.emit_after("process_boot")  # starts the time-limit watcher thread
        worker.start()
        return worker


class DramatiqQueue:
    """The scale-out :class:`~mlsharp.service.queue.ports.JobQueue` (module docstring)."""

    def __init__(
        self, settings: Settings, client: Any, store: RedisJobStore, metrics: Metrics
    ) -> None:
        from dramatiq.middleware.time_limit import TimeLimitExceeded

        assert settings.queue is not None
        self.settings = settings
        self.url = settings.queue
        self.store = store
        self.metrics = metrics
        self.broker = TaskBroker(settings, client)
        self.time_limit_errors: tuple[type[BaseException], ...] = (TimeLimitExceeded,)
        self.beat_seconds = max(0.2, self.broker.heartbeat_ms / 5000)
        self.reconciler = Reconciler(
            store,
            self.broker,
            grace_seconds=settings.queue_grace_seconds,
            on_action=lambda action: metrics.reconciled.labels(action).inc(),
        )
        self._stop = threading.Event()
        self._boot_thread: threading.Thread | None = None
        self._heartbeat: Heartbeat | None = None
        self._worker: Any = None

    def start(
        self,
        run: Callable[[Lease], None],
        *,
        threads: int,
        on_idle: Callable[[], object],
        on_beat: Callable[[], None],
        on_ended: Callable[[JobRecord], None],
    ) -> None:
        """Consume the queue once Redis answers (waiting in the background)."""

        def boot() -> None:
            if not wait_for_redis(self.broker.broker.client, self.url, stop=self._stop):
                return
            self._heartbeat = Heartbeat(self.broker, interval=self.beat_seconds, on_beat=on_beat)
            self._heartbeat.start()
            self.reconciler.start()
            handle = lambda job_id: self._deliver(job_id, run, on_ended)  # noqa: E731
            self._worker = self.broker.consume(handle, threads=threads)
            log.info("consuming jobs from the queue (%d thread(s))", threads)

        self._boot_thread = threading.Thread(target=boot, name="mlsharp-queue-boot")
        self._boot_thread.start()

    def send(self, job: JobRecord, delay_seconds: float = 0.0) -> None:
        """Send the job's message; if Redis is away, the reconciler sends it later."""
        try:
            self.broker.enqueue(job, delay_seconds)
        except connection_errors() as error:
            log.warning("job %s: could not send it to the queue now (%s)", job.id, error)

    def stop(self, timeout: float) -> None:
        """Finish the runs in hand (up to ``timeout``) and hand prefetched messages back."""
        self._stop.set()
        if self._boot_thread is not None:
            self._boot_thread.join()
        if self._worker is not None:
            self._worker.stop(timeout=int(timeout * 1000))
            self._worker = None
        self.reconciler.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()

    # -- one delivery --------------------------------------------------------------------

    def _deliver(
        self,
        job_id: str,
        run: Callable[[Lease], None],
        on_ended: Callable[[JobRecord], None],
    ) -> None:
        """Turn one delivery of ``job_id`` into a run, or skip it (on a Dramatiq thread)."""
        outcome, job = self._start(job_id, take_over=False)
        if outcome == transitions.ORPHAN:
            outcome, job = self._confirm_orphan(job_id)
        if outcome in (transitions.SKIP, transitions.BUSY):
            reason = "busy" if outcome == transitions.BUSY else "finished"
            self.metrics.skipped.labels(reason).inc()
            if outcome == transitions.BUSY:
                log.info("job %s: delivery skipped (a live run holds it)", job_id)
            else:
                status = job.status.value if job else "gone"
                log.info("job %s: delivery skipped (%s)", job_id, status)
            return
        assert job is not None
        if outcome == transitions.EXHAUSTED:  # ended, its outbox entry in the same commit
            log.warning("job %s %s: %s", job_id, job.status.value, (job.error or {}).get("message"))
            on_ended(job)
            return
        run(Lease(job))

    def _start(self, job_id: str, *, take_over: bool) -> tuple[str, JobRecord | None]:
        return call_with_retry(
            lambda: self.store.start_attempt(
                job_id, self.settings.job_max_attempts, take_over=take_over
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
            if outcome != transitions.ORPHAN:
                return outcome, job
        log.info("job %s: its run holds no lease any more; taking over", job_id)
        return self._start(job_id, take_over=True)


class Heartbeat:
    """A thread calling :meth:`TaskBroker.heartbeat` every ``interval`` seconds, and
    ``on_beat()`` first (the runner renews its run leases there).

    Logs once when Redis goes away and once when it is back (not every beat).
    """

    def __init__(
        self, queue: TaskBroker, interval: float, on_beat: Callable[[], None] | None = None
    ) -> None:
        self.queue = queue
        self.interval = interval
        self.on_beat = on_beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlsharp-heartbeat", daemon=True)
        self.healthy = True

    def start(self) -> None:
        """Start beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the broker then considers this worker dead after the timeout)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        errors: tuple[type[BaseException], ...] = (*connection_errors(), ServiceUnavailable)
        while not self._stop.is_set():
            try:
                # Leases first: after an outage they must be back before another worker,
                # told by the broker that this one is dead, decides to take its job over.
                if self.on_beat is not None:
                    self.on_beat()
                self.queue.heartbeat()
            except errors as error:
                if self.healthy:
                    log.warning("lost the connection to redis (%s); retrying", error)
                self.healthy = False
            except Exception:  # a bug must not stop the heartbeat (the jobs would move)
                log.exception("heartbeat error; continuing")
            else:
                if not self.healthy:
                    log.info("connection to redis restored")
                self.healthy = True
            self._stop.wait(self.interval)
