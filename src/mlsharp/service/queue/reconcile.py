"""``Reconciler``: no job stays ``queued`` or ``running`` without a queue message.

The job record (Redis) and its queue message (Dramatiq) are written by separate calls,
so a message can go missing while the record waits for it: a send while Redis is down,
an API instance or worker killed between storing a job and sending it, a message acked
by a worker that could not finish its job, a message requeued after a Redis restart
that lost it. A message can also die: dead-lettered once the queue's own retries ran
out. Every worker runs a reconciler thread; a Redis lock lets one sweep at a time run in
the cluster, at most once per ``interval``. A sweep looks at every queued or running job
that has neither a live run lease nor a message on its way (``job_store`` keys), and

* sends its message again if the broker holds none for it (the resent message is an
  ordinary duplicate at worst: a delivery of a job that runs or ended is skipped, so it
  still completes once, with one result and one webhook);
* fails it (``queue_message_dead``, its ``job.failed`` outbox entry in the same commit)
  if its only message was dead-lettered.

A job waiting in a long queue is left alone: its message is in the broker.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlsharp.errors import ServiceUnavailable
from mlsharp.service.jobs.model import JobRecord
from mlsharp.service.jobs.redis import RedisJobStore
from mlsharp.service.redis_conn import connection_errors

if TYPE_CHECKING:
    from mlsharp.service.queue.dramatiq import TaskBroker

log = logging.getLogger("mlsharp.distributed")


class Reconciler:
    """Periodic sweep re-sending lost queue messages (see the module docstring)."""

    def __init__(
        self,
        store: RedisJobStore,
        queue: TaskBroker,
        *,
        grace_seconds: float,
        on_action: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.grace_seconds = grace_seconds
        #: Seconds between sweeps (cluster-wide, by the lock).
        self.interval = min(15.0, max(0.5, grace_seconds / 2))
        self.on_action = on_action
        self._lock_key = f"{store.ns}:reconcile:lock"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping every ``interval`` seconds on a background thread."""
        self._thread = threading.Thread(target=self._run, name="mlsharp-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a sweep in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        errors: tuple[type[BaseException], ...] = (*connection_errors(), ServiceUnavailable)
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except errors as error:  # Redis away: the next sweep tries again
                log.debug("reconcile sweep skipped: %s", error)
            except Exception:  # a bug must not end the sweeps
                log.exception("reconcile sweep failed; continuing")

    def sweep(self) -> dict[str, int] | None:
        """One sweep if this process gets the lock; ``{"resent": n, "failed": m}``."""
        token = secrets.token_hex(8)
        client = self.store.client
        if not client.set(self._lock_key, token, nx=True, px=int(self.interval * 1000)):
            return None  # another process swept less than an interval ago
        done = {"resent": 0, "failed": 0}
        jobs = self.store.unfinished()
        if not jobs:
            return done
        settled = self.store.settled([job.id for job in jobs])
        suspects = [job for job in jobs if job.id not in settled]
        if not suspects:
            return done
        messages = self.queue.message_states(self.grace_seconds)
        for job in suspects:
            state = messages.get(job.id)
            if state == "live":
                continue
            if state == "dead":
                if self._fail(job):
                    done["failed"] += 1
                continue
            self.store.mark_sending(job.id)
            self.queue.enqueue(job)
            done["resent"] += 1
            self._count("resent")
            log.warning("job %s (%s) had no queue message: sent again", job.id, job.status.value)
        return done

    def _fail(self, job: JobRecord) -> bool:
        error = {
            "code": "queue_message_dead",
            "message": "the job's queue message was dead-lettered (the queue's retries ran out)",
        }
        final = self.store.fail_unfinished(job.id, error)
        if final is None:
            return False
        self._count("failed")
        log.warning("job %s failed: %s", job.id, error["message"])
        return True

    def _count(self, action: str) -> None:
        if self.on_action is not None:
            self.on_action(action)
