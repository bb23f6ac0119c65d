"""Fixtures for service tests: a real uvicorn server on a free 127.0.0.1 port.

``live_server(**settings)`` starts ``create_app(Settings(...))`` with the tiny model in a
thread, waits until it answers, and stops it at teardown. ``serve_process(...)`` runs
``mlsharp serve`` as a separate process (for restart tests).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import PARITY

PHOTO = PARITY / "images" / "astronaut.jpg"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def jpeg_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 90, 30)
) -> bytes:
    """A small real JPEG; different colors give different cache keys."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class LiveServer:
    """A running server: its base URL, a client, its app and settings."""

    url: str
    client: httpx.Client
    app: Any
    settings: Any
    data_dir: Path

    @property
    def state(self) -> Any:
        """The app's ServiceState (for assertions on internals, used sparingly)."""
        return self.app.state.mlsharp

    def wait_job(self, job_id: str, timeout: float = 60.0, **headers: str) -> dict:
        """Poll until the job is finished; returns its JSON."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.client.get(f"/v1/jobs/{job_id}", headers=headers).json()
            if body.get("status") in ("succeeded", "failed", "canceled"):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {body.get('status')} after {timeout}s")
            time.sleep(0.05)

    def submit(self, data: bytes | None = None, name: str = "photo.jpg", **kwargs: Any):
        """POST /v1/jobs with one file."""
        files = {"file": (name, data if data is not None else jpeg_bytes(), "image/jpeg")}
        return self.client.post("/v1/jobs", files=files, **kwargs)


@contextlib.contextmanager
def run_live_server(
    tmp_path: Path, tiny_checkpoint: Path, **overrides: Any
) -> Iterator[LiveServer]:
    """Start the app under uvicorn in a thread; stop it on exit."""
    import uvicorn

    from mlsharp.config import Settings
    from mlsharp.service.app import create_app
    from mlsharp.service.server import uvicorn_options

    values: dict[str, Any] = {
        "preset": "tiny",
        "checkpoint": str(tiny_checkpoint),
        "device": "cpu",
        "offline": True,
        "data_dir": str(tmp_path / "data"),
        "webhook_backoff_seconds": 0.05,
    }
    values.update(overrides)
    settings = Settings(**values)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            **uvicorn_options(settings),  # the read timeouts and limits of `mlsharp serve`
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60)
    live = LiveServer(url, client, app, settings, Path(settings.data_dir))
    if settings.workers > 0:
        live.state.model.ready.wait(60)
    try:
        yield live
    finally:
        client.close()
        server.should_exit = True
        thread.join(30)


@pytest.fixture()
def live_server(tmp_path: Path, tiny_checkpoint: Path):
    """Factory fixture: ``with live_server(**settings) as server: ...``."""

    def start(**overrides: Any):
        return run_live_server(tmp_path, tiny_checkpoint, **overrides)

    return start


@pytest.fixture()
def server(live_server) -> Iterator[LiveServer]:
    """A default server (tiny model, open access)."""
    with live_server() as running:
        yield running


@dataclass
class ServeProcess:
    """``mlsharp serve`` in a child process."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for it to exit; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        """Everything the server printed."""
        return self.log_path.read_text(errors="replace")


def launch_serve(
    data_dir: Path,
    checkpoint: Path,
    log_path: Path,
    *extra: str,
    cache_dir: Path,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``mlsharp serve`` (tiny model, CPU, offline) on a free 127.0.0.1 port.

    Output goes to ``log_path``. The child gets this process's environment without any
    ``MLSHARP_*`` variable, plus ``MLSHARP_CACHE=cache_dir`` and ``env``. Returns the
    process and its base URL; the caller waits for it and stops it.
    """
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    full_env.update(MLSHARP_CACHE=str(cache_dir), **(env or {}))
    command = [
        sys.executable,
        "-m",
        "mlsharp",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--preset",
        "tiny",
        "--checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
        "--offline",
        *extra,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return process, f"http://127.0.0.1:{port}"


def wait_until_ok(url: str, process: subprocess.Popen, *, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 (True), or the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@pytest.fixture()
def serve_process(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[Any]:
    """Factory fixture starting ``mlsharp serve`` processes; all are killed at teardown."""
    started: list[ServeProcess] = []

    def start(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> ServeProcess:
        log_path = tmp_path / f"serve-{len(started)}.log"
        process, url = launch_serve(
            data_dir, tiny_checkpoint, log_path, *extra, cache_dir=tmp_path / "cache", env=env
        )
        handle = ServeProcess(process, url, log_path)
        started.append(handle)
        if not wait_until_ok(f"{url}/v1/health", process, timeout=60):
            raise RuntimeError(f"mlsharp serve did not start:\n{handle.log()}")
        return handle

    yield start
    for handle in started:
        if handle.process.poll() is None:
            handle.process.kill()
            handle.process.wait(10)


# -- the same tests over each backend (dramatiq's conftest does this with its brokers) --


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path: Path) -> Iterator[Any]:
    """A job store of each backend: SQLite (embedded) or Redis (scale-out)."""
    if request.param == "sqlite":
        from mlsharp.service.jobs.sqlite import SQLiteJobStore

        made = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from mlsharp.service.jobs.redis import RedisJobStore

        made = RedisJobStore(request.getfixturevalue("redis_server").client(), "t")
    yield made
    made.close()


@pytest.fixture()
def second_store(store, tmp_path: Path):
    """``second()``: another store over the same data (another process, in effect)."""
    made: list[Any] = []

    def second() -> Any:
        if hasattr(store, "claim_next"):
            from mlsharp.service.jobs.sqlite import SQLiteJobStore

            made.append(SQLiteJobStore(tmp_path / "jobs.sqlite3"))
        else:
            from mlsharp.service.jobs.redis import RedisJobStore

            made.append(RedisJobStore(store.client.__class__.from_url(_redis_url(store)), "t"))
        return made[-1]

    yield second
    for one in made:
        one.close()


def _redis_url(store: Any) -> str:
    kwargs = store.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


@pytest.fixture()
def sqlite_store(tmp_path: Path) -> Iterator[Any]:
    """The embedded store alone (what only it does: it is the embedded queue)."""
    from mlsharp.service.jobs.sqlite import SQLiteJobStore

    made = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    yield made
    made.close()


@pytest.fixture()
def webhooks_on(tmp_path: Path):
    """``webhooks_on(store)``: a webhook service over the same backend and data as a job
    store (so it relays that store's outbox)."""
    made: list[Any] = []

    def build(store: Any) -> Any:
        from mlsharp.service.webhooks import WebhookService

        if hasattr(store, "claim_next"):
            from mlsharp.service.webhooks.sqlite import SQLiteWebhookStore

            hooks = SQLiteWebhookStore(store.path)
        else:
            from mlsharp.service.webhooks.redis import RedisWebhookStore

            hooks = RedisWebhookStore(store.client, "t")
        made.append(WebhookService(hooks, allow_private=True))
        return made[-1]

    yield build
    for one in made:
        one.close()


@pytest.fixture()
def damage():
    """``damage(store, job_id)``: overwrite a stored record with something malformed."""

    def spoil(store: Any, job_id: str) -> None:
        if hasattr(store, "claim_next"):
            import sqlite3

            with sqlite3.connect(store.path) as db:
                db.execute("UPDATE jobs SET timings = '[1, 2' WHERE id = ?", (job_id,))
        else:
            store.client.set(f"t:job:{job_id}", '{"id": "' + job_id + '", "status": "exploded"}')

    return spoil
