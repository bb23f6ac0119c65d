"""Memory safety of the engine: out-of-memory handling, cache release, reclaim policy.

* :func:`out_of_memory_reason` recognises an allocation failure (``torch.OutOfMemoryError``
  on CUDA, the MPS and CPU allocators' ``RuntimeError`` messages, Python's ``MemoryError``).
* :func:`run_guarded` runs a step and turns such a failure into
  :class:`~mlsharp.errors.OutOfMemory` *after* dropping the failed step's tensors and
  releasing cached memory, so the process can go on with the next image.
* :func:`release_cached_memory` hands cached allocator memory back: ``gc`` plus
  ``torch.cuda.empty_cache`` / ``torch.mps.empty_cache``; on Linux CPUs glibc's
  ``malloc_trim``, which returns freed heap pages to the system.
* :class:`MemoryGuard` is the policy a long-running process (the service worker) applies
  between jobs: release after ``idle_seconds`` without work, and reclaim when the
  device's memory use exceeds ``reclaim_threshold`` (a fraction of its capacity).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from mlsharp.errors import OutOfMemory

T = TypeVar("T")

#: Substrings of allocator errors that mean "out of memory" (CUDA, MPS, CPU allocators).
_OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "defaultcpuallocator",
    "cannot allocate memory",
)


def out_of_memory_reason(error: BaseException) -> str | None:
    """The first line of ``error`` when it is an allocation failure, else ``None``."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return first
    if isinstance(error, RuntimeError) and any(m in text.lower() for m in _OOM_MARKERS):
        # The CPU allocator prefixes "[enforce fail at alloc_cpu.cpp:NN] err == 0."
        return first.split("] ", 1)[-1]
    return None


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # musl or no libc found: nothing to trim
        pass


def release_cached_memory(device: torch.device) -> None:
    """Collect garbage and give the allocator's cached blocks on ``device`` back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
    else:
        _malloc_trim()


def memory_use(device: torch.device) -> tuple[int, int] | None:
    """(bytes in use, capacity) of ``device``: reserved/total on CUDA, driver-allocated/
    recommended on MPS, this process's RSS/physical RAM on the CPU; ``None`` if unknown."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return torch.cuda.memory_reserved(device), total
    if device.type == "mps":
        return torch.mps.driver_allocated_memory(), torch.mps.recommended_max_memory()
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return rss, total


def run_guarded(
    step: Callable[[], T],
    *,
    device: torch.device,
    context: str,
    advice: str = "",
    release: Callable[[], object] | None = None,
) -> T:
    """Run ``step``; an allocation failure becomes :class:`OutOfMemory` after cleanup.

    The message reads "out of memory on <device> while <context> (<allocator message>)
    <advice>"; ``context`` should name the settings a user can change (resolution,
    precision, batch size) and ``advice`` what to change. The original exception is dropped
    before memory is released (``release``, default :func:`release_cached_memory`): its
    traceback holds the failed step's frames and with them its tensors.
    """
    reason = None
    try:
        return step()
    except (RuntimeError, MemoryError) as error:  # OutOfMemoryError is a RuntimeError
        reason = out_of_memory_reason(error)
        if reason is None:
            raise
    # Outside the except block: the exception, its traceback and the tensors are gone.
    if release is None:
        release_cached_memory(device)
    else:
        release()
    message = f"out of memory on {device} while {context} ({reason})"
    raise OutOfMemory(f"{message}{'; ' + advice if advice else ''}")


class MemoryGuard:
    """Releases cached memory when the process idles or its use crosses a threshold, and
    never while another thread is using the device.

    The engine wraps each use of the device (a batch's forward, post-processing and
    copies) in :meth:`working`. A release (``synchronize`` + ``empty_cache``) waits until
    no other thread is inside it, and new work waits while a release runs: a release
    in the middle of another job's forward would break a CUDA graph capture (a
    synchronize during capture is an error) and stall the forward.

    Args:
        device: the engine's device.
        idle_seconds: release once after this long without work (``None``/0: never).
        reclaim_threshold: after a job, release when used/capacity (see
            :func:`memory_use`) exceeds this fraction (``None``: never).
        on_release: called with the reason (``"idle"``, ``"threshold"``, ``"oom"``)
            after each release, e.g. to count it in metrics.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        idle_seconds: float | None = None,
        reclaim_threshold: float | None = None,
        on_release: Callable[[str], None] | None = None,
    ) -> None:
        self.device = device
        self.idle_seconds = idle_seconds or None
        self.reclaim_threshold = reclaim_threshold
        self.on_release = on_release
        #: Releases done so far, by reason.
        self.releases: Counter[str] = Counter()
        #: Called (under the release's exclusion) after the allocator's cache is given
        #: back, e.g. to drop the engine's pinned host buffers.
        self.release_hooks: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._working = 0  # threads inside working(), counted once each
        self._mine = threading.local()  # this thread's nesting depth in working()
        self._releasing = False
        self._last_activity = time.monotonic()
        self._idle_released = True  # nothing to release before the first job

    @contextmanager
    def working(self) -> Iterator[None]:
        """Mark the enclosed block as using the device (re-entrant per thread)."""
        depth = getattr(self._mine, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._releasing:
                    self._cond.wait()
                self._working += 1
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth = depth
            if depth == 0:
                with self._cond:
                    self._working -= 1
                    self._cond.notify_all()

    @property
    def busy(self) -> bool:
        """Some thread is using the device right now."""
        with self._cond:
            return self._working > 0

    def release(self, reason: str, *, wait: bool = True) -> bool:
        """Release cached memory and record ``reason``; True if it did.

        Waits until no *other* thread is inside :meth:`working` (the calling thread's own
        block does not count: an out-of-memory release follows its own failed forward).
        With ``wait=False`` it gives up at once instead (returns False) when the device
        is in use.
        """
        own = 1 if getattr(self._mine, "depth", 0) else 0
        with self._cond:
            while self._working > own or self._releasing:
                if not wait:
                    return False
                self._cond.wait()
            self._releasing = True
        try:
            release_cached_memory(self.device)
            for hook in self.release_hooks:
                hook()
            self.releases[reason] += 1
        finally:
            with self._cond:
                self._releasing = False
                self._cond.notify_all()
        if self.on_release is not None:
            self.on_release(reason)
        return True

    def note_activity(self) -> None:
        """Record that work happened (restarts the idle clock)."""
        self._last_activity = time.monotonic()
        self._idle_released = False

    def after_job(self) -> bool:
        """Call between jobs: notes activity, reclaims above the threshold; True if it did.

        Skipped while another thread uses the device (the next job's end tries again).
        """
        self.note_activity()
        if self.reclaim_threshold is None:
            return False
        use = memory_use(self.device)
        if use is None or use[0] <= self.reclaim_threshold * use[1]:
            return False
        return self.release("threshold", wait=False)

    def maybe_release_idle(self) -> bool:
        """Call when idle: releases once per idle period longer than ``idle_seconds``
        (not while another thread uses the device)."""
        if self.idle_seconds is None or self._idle_released:
            return False
        if time.monotonic() - self._last_activity < self.idle_seconds:
            return False
        if not self.release("idle", wait=False):
            return False
        self._idle_released = True
        return True


#: The largest batch the memory-based estimate suggests.
MAX_ESTIMATED_BATCH = 16


def estimate_batch_size(
    device: torch.device,
    bytes_per_image: int | None,
    *,
    limit: int = MAX_ESTIMATED_BATCH,
    headroom: float = 0.8,
) -> int:
    """Images per forward that fit in ``headroom`` of the free memory of a CUDA device.

    ``bytes_per_image`` is the measured peak of one image's forward (``None`` before the
    first measurement: 1). On other devices the answer is 1: there the free memory is not
    known reliably and batching gains little (set a batch size explicitly instead).
    """
    if device.type != "cuda" or not bytes_per_image:
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(1, min(limit, int(headroom * free) // bytes_per_image))
