"""End-to-end fixtures: a real ``mlsharp serve`` (tiny model) and Debian's chromium.

Playwright drives the system chromium (``/usr/bin/chromium``; never ``playwright install``)
headless with software WebGL (SwiftShader). Without chromium or playwright the tests are
skipped with the reason, except under ``CI=true``, where that is a failure.

Screenshots go to ``$MLSHARP_TEST_ARTIFACTS`` (default ``tests/e2e/artifacts/``, ignored
by git).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import launch_serve, wait_until_ok

CHROMIUM = Path(os.environ.get("MLSHARP_CHROMIUM", "/usr/bin/chromium"))
#: Software WebGL 2 in headless chromium (see docs/web.md).
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
#: A small viewport keeps SwiftShader's frames quick.
VIEWPORT = {"width": 760, "height": 640}
#: The viewer's clear colour (style: --viewer-bg, viewer.js: setClearColor).
BACKGROUND = (16, 18, 24)
ARTIFACTS = Path(os.environ.get("MLSHARP_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
API_KEY = "e2e-secret-key"


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"end-to-end tests cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless chromium, shared by the whole session."""
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class Server:
    """An ``mlsharp serve`` child process."""

    url: str
    process: subprocess.Popen
    log_path: Path
    data_dir: Path
    headers: dict[str, str] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        """An HTTP client of this server (with its API key, if any)."""
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def submit_photo(self, path: Path, **form: str) -> str:
        """Submit ``path`` (with form fields ``form``) and wait until its job succeeded."""
        with self.client() as client:
            created = client.post(
                "/v1/jobs", files={"file": (path.name, path.read_bytes())}, data=form
            )
            created.raise_for_status()
            job_id = created.json()["id"]
            deadline = time.monotonic() + 120
            while True:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] == "succeeded":
                    return job_id
                assert job["status"] in ("queued", "running"), job
                assert time.monotonic() < deadline, f"job {job_id} did not finish"
                time.sleep(0.1)


def start_server(data_dir: Path, checkpoint: Path, env: dict[str, str] | None = None) -> Server:
    """Run ``mlsharp serve`` (tiny model, CPU) and wait until the model is loaded."""
    log_path = data_dir.parent / f"{data_dir.name}-serve.log"
    process, url = launch_serve(
        data_dir, checkpoint, log_path, cache_dir=data_dir.parent / "cache", env=env
    )
    if not wait_until_ok(f"{url}/v1/ready", process, timeout=90):
        process.kill()
        raise RuntimeError(f"mlsharp serve did not start:\n{log_path.read_text()}")
    return Server(url, process, log_path, data_dir)


def stop_server(server: Server) -> None:
    """Stop the child process (SIGTERM, then SIGKILL)."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(10)


@pytest.fixture(scope="session")
def web_server(
    browser: Any, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[Server]:
    """An open ``mlsharp serve`` for the whole session (started after the browser check)."""
    server = start_server(tmp_path_factory.mktemp("web") / "data", tiny_checkpoint)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def keyed_server(
    browser: Any, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[Server]:
    """An ``mlsharp serve`` that requires the API key :data:`API_KEY`."""
    server = start_server(
        tmp_path_factory.mktemp("web-keyed") / "data",
        tiny_checkpoint,
        env={"MLSHARP_API_KEYS": API_KEY},
    )
    server.headers = {"Authorization": f"Bearer {API_KEY}"}
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def idle_server(
    browser: Any, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[Server]:
    """An ``mlsharp serve`` without workers (jobs stay queued) and a queue of one job.

    Its jobs change state only when a test changes them in its SQLite job store, as a
    worker process sharing the data directory would; a second queued job gets 503.
    """
    server = start_server(
        tmp_path_factory.mktemp("web-idle") / "data",
        tiny_checkpoint,
        env={"MLSHARP_WORKERS": "0", "MLSHARP_MAX_QUEUE": "1"},
    )
    yield server
    stop_server(server)


@dataclass
class PageRun:
    """A page plus what its console reported."""

    page: Any
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        """Console messages about a blocked resource (Content-Security-Policy)."""
        return [m for m in self.console if "Content Security Policy" in m]


@pytest.fixture()
def open_page(browser: Any) -> Iterator[Any]:
    """Factory: ``open_page(url, locale=, viewport=, init_script=)`` -> :class:`PageRun`.

    Each call gets a fresh browser context (its own localStorage); ``init_script`` runs in
    it before the page's own scripts. Uncaught page errors fail the test at teardown.
    """
    contexts: list[Any] = []
    runs: list[PageRun] = []

    def open_(
        url: str,
        *,
        locale: str = "en-US",
        viewport: dict | None = None,
        init_script: str | None = None,
    ) -> PageRun:
        context = browser.new_context(locale=locale, viewport=viewport or VIEWPORT)
        if init_script:
            context.add_init_script(init_script)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(90_000)
        run = PageRun(page)
        page.on("console", lambda message: run.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: run.errors.append(str(error)))
        runs.append(run)
        page.goto(url)
        return run

    yield open_
    for context in contexts:
        context.close()
    for run in runs:
        assert not run.errors, f"uncaught errors in the page: {run.errors}"
        assert not run.csp_violations(), run.csp_violations()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for screenshots kept after the run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
