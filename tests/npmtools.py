"""Third-party readers from npm, run with Node (the independent checks of our files).

The packages are pinned in ``tests/npm/package.json`` (lockfile beside it). ``.ci/run``
installs them with ``npm ci`` under ``CI=true``; on a developer's machine the
:func:`npm_tools` fixture runs ``npm ci`` once when Node is present. Without Node (or when
the install fails) the tests are skipped with the reason, except under ``CI=true``, where
that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

NPM_DIR = REPO / "tests" / "npm"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"independent checks cannot run under CI: {reason}")
    pytest.skip(reason)


@dataclass
class NpmTools:
    """Node and the installed packages of ``tests/npm``."""

    node: str
    folder: Path

    def run(self, *args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``node ARGS...`` in ``tests/npm``; fails the test on a non-zero exit."""
        result = subprocess.run(
            [self.node, *map(str, args)],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"node {args} failed:\n{result.stderr[-4000:]}"
        return result

    def json(self, script: str, *args: str | Path) -> Any:
        """The JSON a helper script of ``tests/npm`` prints."""
        return json.loads(self.run(self.folder / script, *args).stdout)

    def splat_transform(self, source: Path, dest: Path) -> None:
        """Convert ``source`` to ``dest`` with PlayCanvas' splat-transform CLI."""
        cli = self.folder / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
        self.run(cli, "--quiet", "--overwrite", source, dest)


def _installed() -> bool:
    lock = NPM_DIR / "node_modules" / ".package-lock.json"
    return lock.exists() and lock.stat().st_mtime >= (NPM_DIR / "package-lock.json").stat().st_mtime


@pytest.fixture(scope="session")
def npm_tools() -> NpmTools:
    """Node with ``tests/npm``'s packages installed (``npm ci`` on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _skip_or_fail("Node.js and npm are not installed (they run the third-party readers)")
    assert node is not None and npm is not None
    if not _installed():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NPM_DIR,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0:
            _skip_or_fail(f"npm ci in tests/npm failed: {result.stderr.strip()[-500:]}")
    return NpmTools(node, NPM_DIR)
