"""Shared fixtures: tiny checkpoints, fixture paths, a CLI runner, a redis-server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
PARITY = DATA / "parity"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised checkpoint of the tiny preset (written once per session)."""
    from mlsharp.commands.random_checkpoint import write_random_checkpoint

    return write_random_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture()
def run_cli(tmp_path: Path):
    """Run ``python -m mlsharp ARGS`` in a subprocess with an isolated cache; returns the
    CompletedProcess (text output)."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
        full_env["MLSHARP_CACHE"] = str(tmp_path / "cache")
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "mlsharp", *args],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or tmp_path,
            timeout=600,
        )

    return run


@pytest.fixture()
def redis_server(tmp_path: Path):
    """A fresh, empty redis-server for one test (tests/servers.py)."""
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()
