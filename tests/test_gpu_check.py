"""``benchmarks/gpu_check.py`` runs on a machine without a GPU as far as it can: the CPU
rows pass, every CUDA row is a SKIP with its reason, and it prints one table. A failing
row does not stop the others, and a run cut short by its deadline still reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a GPU, run the script itself"
)


def run_check(*args: str, report, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--preset", "tiny", "--quick",
         "--json", str(report), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def table_rows(stdout: str) -> list[str]:
    table = stdout[stdout.index("| check | status | result | s |") :]
    return [line for line in table.splitlines() if line.startswith("| ")][1:]  # no header


def test_device_check_runs_on_the_cpu_and_skips_the_cuda_parts(tmp_path):
    report = tmp_path / "rows.json"
    # A second configuration that cannot run: its row fails, the rows after it still run.
    done = run_check("--configs", "fp32,fp32+no_such_option", report=report)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    written = json.loads(report.read_text())
    assert written["complete"] is True
    assert written["environment"]["preset"] == "tiny" and written["environment"]["gpus"] == []
    rows = {row["name"]: row for row in written["rows"]}
    status = {name: row["status"] for name, row in rows.items()}
    for name in (
        "cuda tests",
        "cuda graphs cuda:0",
        "cuda graphs cuda:1",
        "no CUDA context",
        "pinned staging",
        "device names",
        "rasterizer gsplat",
    ):
        assert status[name] == "SKIP" and "CUDA" in rows[name]["result"], rows[name]
    assert status["sync-free forward"] == "PASS"
    assert status["bench fp32"] == "PASS" and "peak" in rows["bench fp32"]["result"]
    assert "no_such_option" in rows.pop("bench fp32+no_such_option")["result"]
    assert status.pop("bench fp32+no_such_option") == "FAIL"
    assert status["rasterizer torch budget 524288"] == "PASS"  # after the failed row
    assert status["precisions vs fp32"] in ("PASS", "WARN")  # random weights: reported
    assert "FAIL" not in status.values()
    assert len(table_rows(done.stdout)) == len(rows) + 1


def test_the_deadline_ends_the_run_with_a_report(tmp_path):
    # A deadline already past: the watchdog reports what is done and exits with status 3
    # instead of letting a hung or slow row run past the device session.
    report = tmp_path / "rows.json"
    done = run_check("--only", "sync-free forward", "--deadline-s", "0", report=report)
    assert done.returncode == 3, done.stderr[-3000:]
    written = json.loads(report.read_text())
    assert written["complete"] is False
    assert len(table_rows(done.stdout)) == len(written["rows"])
    assert all(row["status"] != "PASS" for row in written["rows"])  # nothing ran to its end


def test_unknown_check_names_are_refused(tmp_path):
    done = run_check("--only", "bench,no such row", report=tmp_path / "r.json", timeout=120)
    assert done.returncode == 2 and "no such row" in done.stderr
