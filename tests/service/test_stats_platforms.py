"""``/v1/stats`` memory on each operating system, with its memory API simulated.

Linux reads ``/proc`` (real here). macOS has no ``/proc``: ``ru_maxrss`` is in *bytes*
there (kilobytes on Linux), so the peak must not be multiplied by 1024. Windows has
neither ``/proc`` nor the ``resource`` module: the working set comes from kernel32's
``K32GetProcessMemoryInfo`` (simulated by a fake kernel32 that fills the structure as
Windows does). Before the fix, Windows without CUDA answered 500 and macOS 1024× too much.
"""

from __future__ import annotations

import ctypes
import sys
from types import SimpleNamespace

import pytest

from mlsharp.runtime import peak

WORKING_SET = 123_456_789  # bytes the fake Windows reports
MAC_PEAK = 987_654_321  # ru_maxrss on macOS: bytes


class FakeKernel32:
    """kernel32 as ``_windows_working_set`` calls it: fills PROCESS_MEMORY_COUNTERS."""

    def __init__(self, succeed: bool = True) -> None:
        self.succeed = succeed

    def GetCurrentProcess(self) -> int:
        return -1  # the pseudo-handle Windows returns

    def K32GetProcessMemoryInfo(self, process: int, counters, size: int) -> int:
        assert process == -1 and size == ctypes.sizeof(counters._obj)
        counters._obj.WorkingSetSize = WORKING_SET
        return int(self.succeed)


def simulate_windows(monkeypatch: pytest.MonkeyPatch, kernel32: FakeKernel32) -> None:
    monkeypatch.setattr(peak, "sys", SimpleNamespace(platform="win32"))
    monkeypatch.setattr(ctypes, "WinDLL", lambda name: kernel32, raising=False)
    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` fails there
    monkeypatch.setattr(peak, "current_rss", lambda: pytest.fail("no /proc on Windows"))


def simulate_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "sys", SimpleNamespace(platform="darwin"))
    monkeypatch.setattr(peak, "current_rss", lambda: None)  # no /proc
    fake = SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: SimpleNamespace(ru_maxrss=MAC_PEAK))
    monkeypatch.setitem(sys.modules, "resource", fake)


def test_linux_reads_the_current_rss_from_proc():
    memory = peak.process_memory()
    assert set(memory) == {"process_rss"}
    assert 10 * 2**20 < memory["process_rss"] < 64 * 2**30


def test_macos_peak_rss_is_already_in_bytes(monkeypatch):
    simulate_macos(monkeypatch)
    assert peak.process_memory() == {"process_peak_rss": float(MAC_PEAK)}


def test_linux_without_proc_scales_kilobytes(monkeypatch):
    monkeypatch.setattr(peak, "current_rss", lambda: None)
    fake = SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: SimpleNamespace(ru_maxrss=2048))
    monkeypatch.setitem(sys.modules, "resource", fake)
    assert peak.process_memory() == {"process_peak_rss": 2048.0 * 1024}


def test_windows_reads_the_working_set(monkeypatch):
    simulate_windows(monkeypatch, FakeKernel32())
    assert peak.process_memory() == {"process_rss": float(WORKING_SET)}


def test_windows_call_failing_gives_no_figure_instead_of_an_error(monkeypatch):
    simulate_windows(monkeypatch, FakeKernel32(succeed=False))
    assert peak.process_memory() == {}
    monkeypatch.setattr(ctypes, "WinDLL", lambda name: (_ for _ in ()).throw(OSError("x")))
    assert peak.process_memory() == {}


@pytest.mark.parametrize("system", ["windows", "macos"])
def test_stats_answers_on_each_platform(server, monkeypatch, system):
    if system == "windows":
        simulate_windows(monkeypatch, FakeKernel32())
        expected = {"process_rss": float(WORKING_SET)}
    else:
        simulate_macos(monkeypatch)
        expected = {"process_peak_rss": float(MAC_PEAK)}
    response = server.client.get("/v1/stats")
    assert response.status_code == 200, response.text
    assert response.json()["memory"] == expected
    (kind, value), *_ = expected.items()
    metrics = server.client.get("/metrics").text
    sample = f'mlsharp_device_memory_bytes{{kind="{kind}"}} '
    lines = [line for line in metrics.splitlines() if line.startswith(sample)]
    assert [float(line.removeprefix(sample)) for line in lines] == [value]
