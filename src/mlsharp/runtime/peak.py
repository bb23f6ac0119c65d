"""Peak memory of a block of work on one device, for ``mlsharp autotune``.

What is measured depends on the device (``PeakMemory.kind`` says which):

``cuda_max_allocated``
    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: the most
    bytes held by tensors at once (weights included), without the caching allocator's
    reserve. The engine itself resets that counter at each forward (for its batch-size
    estimate), so :meth:`PeakMemory.sample` is called after every prediction to fold each
    one's peak into the running maximum.
``rss_high_water_mark``
    Linux, CPU: the kernel's peak resident set size (``VmHWM`` in ``/proc/self/status``),
    reset at the start by writing ``5`` to ``/proc/self/clear_refs``. Exact for the
    process, so it includes whatever else the process holds (the reset sets the mark to
    the current RSS, which may still contain memory freed by an earlier candidate but
    not returned to the OS): an upper bound for the block itself.
``rss_sampled``
    Other POSIX systems or where ``clear_refs`` is not writable: the largest RSS seen
    by a thread that samples every 5 ms. May miss short spikes.
``mps_driver_sampled``
    Apple MPS: the largest ``torch.mps.driver_allocated_memory`` seen by the sampler.
``rss_lifetime_peak``
    macOS, CPU: ``ru_maxrss``, the process's peak since it started (cannot be reset),
    so only a block that raises the peak is measured exactly.
``unavailable``
    Nothing suitable (Windows): ``peak`` stays ``None``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["PeakMemory", "current_rss", "process_memory"]

SAMPLE_INTERVAL = 0.005  # seconds between samples of the sampling fallback


def current_rss() -> int | None:
    """Resident set size of this process in bytes, or ``None`` where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def process_memory() -> dict[str, float]:
    """This process's memory in bytes, as each operating system can tell it cheaply:
    ``{"process_rss": ...}`` (the current resident set) on Linux (``/proc``) and Windows
    (the working set, ``GetProcessMemoryInfo``); ``{"process_peak_rss": ...}`` on macOS and
    other POSIX systems (``ru_maxrss``, the peak since start: the current size needs Mach
    calls); ``{}`` where nothing can be read. Never raises: ``/v1/stats`` and the metrics
    scrape call it."""
    if sys.platform == "win32":
        working_set = _windows_working_set()
        return {} if working_set is None else {"process_rss": float(working_set)}
    rss = current_rss()
    if rss is not None:
        return {"process_rss": float(rss)}
    peak = _lifetime_peak_rss()
    return {} if peak is None else {"process_peak_rss": float(peak)}


def _windows_working_set(kernel32: Any = None) -> int | None:
    """``WorkingSetSize`` of this process from ``K32GetProcessMemoryInfo`` (kernel32 has
    had it since Windows 7), or ``None`` when the call fails."""
    import ctypes

    class ProcessMemoryCounters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS (psapi.h)
        _fields_ = [
            ("cb", ctypes.c_uint32),
            ("PageFaultCount", ctypes.c_uint32),
            ("PeakWorkingSetSize", ctypes.c_size_t),
            ("WorkingSetSize", ctypes.c_size_t),
            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
            ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
            ("PagefileUsage", ctypes.c_size_t),
            ("PeakPagefileUsage", ctypes.c_size_t),
        ]

    try:
        if kernel32 is None:
            kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
        counters = ProcessMemoryCounters()
        counters.cb = ctypes.sizeof(counters)
        process = kernel32.GetCurrentProcess()
        if not kernel32.K32GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return None
        return int(counters.WorkingSetSize)
    except (AttributeError, OSError):
        return None


def _lifetime_peak_rss() -> int | None:
    """``ru_maxrss``: the process's peak RSS since it started (bytes on macOS, KiB elsewhere)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    value = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return value if sys.platform == "darwin" else value * 1024


def _vm_hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class _Sampler:
    def __init__(self, read: Callable[[], int | None]) -> None:
        self.read = read
        self.peak: int | None = read()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mlsharp-peak-memory", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_INTERVAL):
            self._sample()

    def _sample(self) -> None:
        value = self.read()
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value

    def finish(self) -> int | None:
        self.stop.set()
        self.thread.join()
        self._sample()
        return self.peak


class PeakMemory:
    """Context manager: ``with PeakMemory(device) as peak: ...`` then ``peak.peak`` (bytes).

    ``device`` is a ``torch.device`` (``cuda``, ``mps`` or ``cpu``).
    """

    def __init__(self, device: Any) -> None:
        self.device = device
        self.kind = "unavailable"
        self.peak: int | None = None
        self._sampler: _Sampler | None = None

    def __enter__(self) -> PeakMemory:
        kind = self.device.type
        if kind == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        elif kind == "mps":
            import torch

            self.kind = "mps_driver_sampled"
            self._sampler = _Sampler(lambda: int(torch.mps.driver_allocated_memory()))
        elif _vm_hwm() is not None and _reset_hwm():
            self.kind = "rss_high_water_mark"
        elif current_rss() is not None:
            self.kind = "rss_sampled"
            self._sampler = _Sampler(current_rss)
        elif _lifetime_peak_rss() is not None:
            self.kind = "rss_lifetime_peak"
        return self

    def sample(self) -> None:
        """Fold the device's peak counter into :attr:`peak` (CUDA; call after each step
        of work, since other code may reset the counter)."""
        if self.kind == "cuda_max_allocated":
            import torch

            value = int(torch.cuda.max_memory_allocated(self.device))
            self.peak = value if self.peak is None else max(self.peak, value)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.kind == "cuda_max_allocated":
            import torch

            torch.cuda.synchronize(self.device)
            self.sample()
        elif self.kind == "rss_high_water_mark":
            self.peak = _vm_hwm()
        elif self.kind == "rss_lifetime_peak":
            self.peak = _lifetime_peak_rss()
        elif self._sampler is not None:
            self.peak = self._sampler.finish()
