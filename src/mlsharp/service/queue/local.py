"""``LocalQueue``: the embedded queue, worker threads taking jobs from the SQLite store.

Each thread claims the oldest due queued job (:meth:`SQLiteJobStore.claim_next` is
atomic, so several threads or processes sharing the store never run a job twice) and
runs it; idle threads look again every second, or at once when a submission wakes them.
Nothing a job or the storage does ends a thread: a failure is logged, shown on
``/v1/ready`` (:class:`~mlsharp.service.health.WorkerHealth`) and tried again after a
pause. Jobs a dead process left ``running`` are queued again when the queue starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mlsharp.errors import MlsharpError
from mlsharp.service.health import WorkerHealth, describe, pauses
from mlsharp.service.jobs.model import JobRecord, Lease
from mlsharp.service.jobs.sqlite import SQLiteJobStore

log = logging.getLogger("mlsharp.worker")

#: Seconds an idle worker sleeps before looking at the store again without a wake-up
#: (other processes may queue jobs in a shared store; a retry may come due).
IDLE_POLL_SECONDS = 1.0


class LocalQueue:
    """Worker threads over the embedded store (see the module docstring)."""

    time_limit_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, store: SQLiteJobStore, health: WorkerHealth) -> None:
        self.store = store
        self.health = health
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(
        self,
        run: Callable[[Lease], None],
        *,
        threads: int,
        on_idle: Callable[[], object],
        on_beat: Callable[[], None],
        on_ended: Callable[[JobRecord], None],
    ) -> None:
        """Queue again the jobs a dead process left running, then start ``threads``."""
        try:
            requeued = self.store.requeue_running()
        except MlsharpError as error:  # the threads report it while they retry
            log.error("could not queue again the jobs left running: %s", error)
        else:
            if requeued:
                log.info("requeued %d job(s) left running by a previous run", requeued)
        for index in range(threads):
            thread = threading.Thread(
                target=self._loop, args=(run, on_idle), name=f"mlsharp-worker-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            self.health.watch(thread)

    def send(self, job: JobRecord, delay_seconds: float = 0.0) -> None:
        """Wake an idle thread (the job is in the store; a delay is the store's)."""
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop taking jobs; wait up to ``timeout`` seconds for the runs in hand."""
        self.health.stopping()
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self, run: Callable[[Lease], None], on_idle: Callable[[], object]) -> None:
        waits = pauses()
        while not self._stop.is_set():
            try:
                job = self.store.claim_next()
            except Exception as error:
                self._trouble("cannot take the next job", error, next(waits))
                continue
            self.health.working()
            waits = pauses()
            if job is None:
                on_idle()
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
                continue
            try:
                run(Lease(job))
            except Exception as error:  # only a bug gets here (the runner records outcomes)
                self._trouble(f"job {job.id} failed unexpectedly", error, next(waits))

    def _trouble(self, what: str, error: Exception, pause: float) -> None:
        """Log a failure of the loop, show it on readiness, pause before the next try."""
        problem = f"{what}: {describe(error)}"
        if isinstance(error, MlsharpError):
            log.error("%s; retrying in %.0fs", problem, pause)
        else:
            log.exception("%s; retrying in %.0fs", problem, pause)
        self.health.failing(problem)
        self._stop.wait(pause)
