"""``JobQueue``: how leased jobs reach the job runner, whatever carries them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mlsharp.service.jobs.model import JobRecord, Lease


class JobQueue(Protocol):
    """Hands jobs to ``run`` (one :class:`Lease` per run) on its own threads.

    The embedded queue is the SQLite store itself, polled by worker threads; the
    scale-out queue is a Redis task queue consumed by every worker process.
    """

    #: Exceptions the queue raises inside a run that exceeds the time limit (``()``
    #: where the queue enforces none).
    time_limit_errors: tuple[type[BaseException], ...]

    def start(
        self,
        run: Callable[[Lease], None],
        *,
        threads: int,
        on_idle: Callable[[], object],
        on_beat: Callable[[], None],
        on_ended: Callable[[JobRecord], None],
    ) -> None:
        """Start handing jobs to ``run`` on ``threads`` threads; ``on_idle`` when there is
        nothing to do, ``on_beat`` on every heartbeat (renew the runs' leases),
        ``on_ended`` for a job a delivery ended without a run (its attempts ran out)."""
        ...

    def send(self, job: JobRecord, delay_seconds: float = 0.0) -> None:
        """Tell the queue a stored, queued job is waiting (to run after ``delay_seconds``).

        Never raises for a transient failure: a job whose message is lost is sent again
        later (the embedded queue finds it in the store anyway).
        """
        ...

    def stop(self, timeout: float) -> None:
        """Stop taking jobs; wait up to ``timeout`` seconds for the runs in hand to end."""
        ...
