"""Wake-ups for code waiting on job changes (event streams, the synchronous endpoint).

The job store is the source of truth; this only says "something changed, look again".
Worker threads call :meth:`ChangeNotifier.notify`; coroutines on the event loop await
:meth:`ChangeNotifier.wait`, which also returns after a timeout so waiters re-read the
store even when the change happened in another process (scale-out).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class ChangeNotifier:
    """Thread-safe broadcast from worker threads to asyncio waiters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def notify(self) -> None:
        """Wake every current waiter (callable from any thread)."""
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            # A closed loop raises RuntimeError: its waiter is gone, nothing to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def wait(self, timeout: float) -> bool:
        """Wait for the next :meth:`notify` or ``timeout`` seconds; True if notified."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.discard(entry)
