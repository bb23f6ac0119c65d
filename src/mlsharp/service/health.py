"""What readiness needs to know about the job runner: dead, failing or stuck workers.

Worker threads report here as they go (a run starts or ends, a loop iteration failed or
worked again); ``/v1/ready`` answers 503 with :meth:`WorkerHealth.problem` while there is
one. Nothing here blocks or does I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class _Run:
    job_id: str
    since: float  # time.monotonic()


class WorkerHealth:
    """Thread-safe record of the worker threads' state (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._failing: dict[str, str] = {}
        self._runs: dict[str, _Run] = {}
        self._stopping = False

    def watch(self, thread: threading.Thread) -> None:
        """Count ``thread`` as a worker that must stay alive."""
        with self._lock:
            self._threads.append(thread)

    def stopping(self) -> None:
        """The runner is stopping: threads ending now are not dead workers."""
        with self._lock:
            self._stopping = True

    def failing(self, problem: str) -> None:
        """The calling worker thread cannot make progress (until :meth:`working`)."""
        with self._lock:
            self._failing[threading.current_thread().name] = problem

    def working(self) -> None:
        """The calling worker thread makes progress again."""
        with self._lock:
            self._failing.pop(threading.current_thread().name, None)

    def started(self, job_id: str) -> None:
        """The calling worker thread started a run of ``job_id``."""
        with self._lock:
            self._runs[threading.current_thread().name] = _Run(job_id, time.monotonic())

    def ended(self) -> None:
        """The calling worker thread's run ended."""
        with self._lock:
            self._runs.pop(threading.current_thread().name, None)

    def problem(self, time_limit: float) -> str | None:
        """Why the workers cannot serve, or ``None``: a worker thread died, one cannot
        make progress (e.g. the disk is full), or a run exceeds ``time_limit`` seconds."""
        now = time.monotonic()
        with self._lock:
            dead = [t.name for t in self._threads if not t.is_alive()]
            if dead and not self._stopping:
                return f"worker thread {dead[0]} has died; restart the service"
            for name, problem in sorted(self._failing.items()):
                return f"worker thread {name}: {problem}"
            for name, run in sorted(self._runs.items()):
                if now - run.since > time_limit:
                    return (
                        f"worker thread {name} has been running job {run.job_id} for "
                        f"{now - run.since:.0f}s, longer than the {time_limit:g}s time limit"
                    )
        return None


def pauses(first: float = 0.5, cap: float = 5.0) -> Iterator[float]:
    """Seconds to wait before each retry of a failing step: doubling up to ``cap``."""
    pause = first
    while True:
        yield pause
        pause = min(cap, pause * 2)


def describe(error: BaseException) -> str:
    """One line about ``error``: our own message, or the exception type and its text."""
    from mlsharp.errors import MlsharpError
    from mlsharp.service.disk import storage_error

    known = error if isinstance(error, MlsharpError) else storage_error(error, "the data")
    if known is not None:
        return str(known)
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
