"""``benchmarks/gpu_check.py`` runs on a machine without a GPU as far as it can: the CPU
rows pass, every CUDA row is a SKIP with its reason, and it prints one table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, run the script itself")
def test_device_check_runs_on_the_cpu_and_skips_the_cuda_parts(tmp_path):
    report = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--preset", "tiny", "--quick",
         "--json", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(report.read_text())}
    status = {name: row["status"] for name, row in rows.items()}
    for name in (
        "cuda tests",
        "cuda graphs cuda:0",
        "cuda graphs cuda:1",
        "no CUDA context",
        "pinned staging",
        "rasterizer gsplat",
    ):
        assert status[name] == "SKIP" and "CUDA" in rows[name]["result"], rows[name]
    assert status["sync-free forward"] == "PASS"
    assert status["bench fp32"] == "PASS" and "peak" in rows["bench fp32"]["result"]
    assert status["rasterizer torch budget 524288"] == "PASS"
    assert status["precisions vs fp32"] in ("PASS", "WARN")  # random weights: reported
    assert "FAIL" not in status.values()
    table = done.stdout[done.stdout.index("| check | status | result | s |") :]
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == len(rows) + 1
