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
from collections.abc import Callable
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
    release: Callable[[], None] | None = None,
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
    """Releases cached memory when the process idles or its use crosses a threshold.

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
        self._lock = threading.Lock()
        self._last_activity = time.monotonic()
        self._idle_released = True  # nothing to release before the first job

    def release(self, reason: str) -> None:
        """Release cached memory now and record ``reason``."""
        with self._lock:
            release_cached_memory(self.device)
            self.releases[reason] += 1
        if self.on_release is not None:
            self.on_release(reason)

    def note_activity(self) -> None:
        """Record that work happened (restarts the idle clock)."""
        self._last_activity = time.monotonic()
        self._idle_released = False

    def after_job(self) -> bool:
        """Call between jobs: notes activity, reclaims above the threshold; True if it did."""
        self.note_activity()
        if self.reclaim_threshold is None:
            return False
        use = memory_use(self.device)
        if use is None or use[0] <= self.reclaim_threshold * use[1]:
            return False
        self.release("threshold")
        return True

    def maybe_release_idle(self) -> bool:
        """Call when idle: releases once per idle period longer than ``idle_seconds``."""
        if self.idle_seconds is None or self._idle_released:
            return False
        if time.monotonic() - self._last_activity < self.idle_seconds:
            return False
        self._idle_released = True
        self.release("idle")
        return True


def estimate_batch_size(
    device: torch.device, bytes_per_image: int | None, *, limit: int = 16, headroom: float = 0.8
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
