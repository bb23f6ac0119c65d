"""The setup scripts: ``setup.sh`` refuses a Python older than 3.10 with a message that
names the one to use (macOS's own python3 is 3.9, where torch then fails confusingly);
``setup.ps1`` and the Windows launcher parse with the PowerShell grammar (they cannot run
here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.powershell import assert_parses

ROOT = Path(__file__).resolve().parents[1]

FAKE_OLD_PYTHON = """#!/bin/sh
# A Python 3.9 as far as setup.sh can tell.
case "$1" in
  --version) echo "Python 3.9.6" ;;
  -c) exit 1 ;;
  *) echo "fake python: unexpected $*" >&2; exit 3 ;;
esac
"""


def fake_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", checkout / "scripts" / "setup.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "python3.9"):
        (bin_dir / name).write_text(FAKE_OLD_PYTHON)
        (bin_dir / name).chmod(0o755)
    for tool in ("dirname", "uname"):  # what setup.sh runs before it needs Python
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    return checkout


def run_setup(checkout: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # Only the fake pythons and two basic tools: no python3.1x on this PATH.
    full_env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", "scripts/setup.sh"],
        cwd=checkout,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setup_sh_refuses_an_old_python_on_path(tmp_path):
    checkout = fake_checkout(tmp_path)
    result = run_setup(checkout, tmp_path)
    assert result.returncode == 1
    assert "mlsharp needs Python 3.10 or newer (found: python3: Python 3.9.6)" in result.stderr
    assert "PYTHON=python3.12 scripts/setup.sh" in result.stderr
    assert not (checkout / ".venv").exists()


def test_setup_sh_refuses_an_old_python_given_by_name(tmp_path):
    checkout = fake_checkout(tmp_path)
    result = run_setup(checkout, tmp_path, PYTHON=str(tmp_path / "bin" / "python3.9"))
    assert result.returncode == 1, result.stderr
    assert "needs Python 3.10 or newer" in result.stderr and "Python 3.9.6" in result.stderr
    assert not (checkout / ".venv").exists()


@pytest.mark.parametrize("script", ["scripts/setup.ps1", "Start.ps1"])
def test_powershell_scripts_parse(script):
    source = (ROOT / script).read_text(encoding="utf-8")
    assert_parses(source, script)


def test_start_bat_calls_start_ps1_with_a_policy_that_lets_it_run():
    text = (ROOT / "Start.bat").read_bytes().decode("ascii")  # cmd reads the OEM code page
    assert "\r\n" in text and "\n" not in text.replace("\r\n", "")  # cmd wants CRLF
    assert "-ExecutionPolicy Bypass" in text and '"%~dp0Start.ps1"' in text


def test_powershell_scripts_are_crlf_with_a_bom_for_windows_powershell():
    # Windows PowerShell 5.1 reads a BOM-less script in the ANSI code page: the BOM keeps
    # any non-ASCII text right; CRLF keeps Notepad and git's autocrlf users happy.
    for script in ("scripts/setup.ps1", "Start.ps1"):
        raw = (ROOT / script).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf"), script
        assert b"\n" not in raw.replace(b"\r\n", b""), script
    assert os.access(ROOT / "scripts" / "setup.sh", os.X_OK)
