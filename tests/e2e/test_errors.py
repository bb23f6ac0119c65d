"""What the page says when things go wrong, and the offline API docs, in a real browser.

Failures come from real servers: a job marked failed in the job store (as a worker
process sharing the data directory does) reaches the page through the event stream; a
full queue answers 503 with ``Retry-After``; unknown jobs and deleted result files 404.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

import mlsharp
from mlsharp.errors import MlsharpError
from mlsharp.service.http_errors import _CODES_BY_STATUS
from mlsharp.service.jobs import JobStatus
from mlsharp.service.jobs.sqlite import SQLiteJobStore
from tests.conftest import REPO
from tests.e2e.helpers import photo_bytes

pytestmark = pytest.mark.slow


def server_error_codes() -> set[str]:
    """Every ``error`` code mlsharp can answer with or record on a failed job.

    The exception classes' codes, the codes of generic HTTP errors, and the codes written
    as literals in the source (``code="..."`` arguments, ``{"code": "..."}`` job errors,
    ``error_response(path, status, "code", ...)``).
    """
    for module in pkgutil.walk_packages(mlsharp.__path__, "mlsharp."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    classes, todo = set(), [MlsharpError]
    while todo:
        cls = todo.pop()
        classes.add(cls)
        todo.extend(cls.__subclasses__())
    codes = {cls.code for cls in classes} | set(_CODES_BY_STATUS.values()) | {"http_error"}
    patterns = [
        r'\bcode="([a-z_]+)"',
        r'"code":\s*"([a-z_]+)"',
        r'error_response\(\s*[^,()]+,\s*\d+,\s*"([a-z_]+)"',
    ]
    for path in (REPO / "src" / "mlsharp").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in patterns:
            codes.update(re.findall(pattern, text))
    return codes


def test_every_server_error_code_has_a_message_in_each_language(web_server, open_page) -> None:
    codes = server_error_codes()
    assert {"queue_full", "internal_error", "out_of_memory", "too_many_files"} <= codes
    page = open_page(web_server.url).page
    missing = page.evaluate(
        """async (codes) => {
            const { keys, LANGUAGES } = await import('/static/i18n.js');
            const missing = {};
            for (const lang of LANGUAGES) {
              const known = new Set(keys(lang));
              missing[lang] = codes.filter((code) => !known.has(`error.${code}`));
            }
            return missing;
        }""",
        sorted(codes),
    )
    assert missing == {"en": [], "zh-CN": []}


def test_api_docs_work_offline(web_server, open_page) -> None:
    page = open_page("about:blank").page
    outside: list[str] = []

    def only_this_machine(route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    page.context.route("**/*", only_this_machine)
    page.goto(web_server.url)
    page.click("footer a[href='/docs']")  # the page's link to the docs
    page.wait_for_url("**/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/jobs" in paths and "/v1/jobs/{job_id}/events" in paths
    assert page.title() == "MLSharp 3D Maker API - Swagger UI"
    assert outside == [], "the docs reached outside this machine"
    # The former ReDoc address leads to the same page.
    page.goto(f"{web_server.url}/redoc")
    page.wait_for_selector(".opblock-summary-path")
    assert urlsplit(page.url).path == "/docs"


def test_a_job_that_fails_shows_its_error_live(idle_server, open_page) -> None:
    page = open_page(idle_server.url).page
    page.set_input_files(
        "#file", files=[{"name": "fails.jpg", "mimeType": "image/jpeg", "buffer": photo_bytes(5)}]
    )
    page.click("#submit")
    page.wait_for_selector("#progress[data-stage='queued']")  # no worker: it waits
    assert page.inner_text("#stage") == "Waiting in the queue — 0%"
    job_id = re.search(r"job=([\w-]+)", page.url).group(1)
    # A worker sharing the data directory fails the job; the page hears it on its stream.
    store = SQLiteJobStore(idle_server.data_dir / "jobs.sqlite3")
    try:
        store.update(
            job_id,
            status=JobStatus.FAILED,
            stage="failed",
            finished_at=time.time(),
            error={"code": "out_of_memory", "message": "cpu ran out of memory at 1536 px"},
        )
    finally:
        store.close()
    page.locator("#error[data-code='out_of_memory']").wait_for()
    text = page.inner_text("#error")
    assert "The server ran out of memory for this photo." in text
    assert "cpu ran out of memory at 1536 px" in text
    assert page.get_attribute("#progress", "data-stage") == "failed"
    assert page.inner_text("#stage").startswith("Failed")


def test_a_full_queue_says_when_to_retry(idle_server, open_page) -> None:
    queued: list[str] = []
    with idle_server.client() as client:
        try:
            refused = None
            for seed in range(10, 13):  # the queue holds one job
                answer = client.post(
                    "/v1/jobs", files={"file": (f"q{seed}.jpg", photo_bytes(seed))}
                )
                if answer.status_code == 503:
                    refused = answer
                    break
                queued.append(answer.json()["id"])
            assert refused is not None and refused.json()["error"] == "queue_full"
            wait = refused.headers["Retry-After"]

            page = open_page(idle_server.url).page
            page.set_input_files(
                "#file",
                files=[{"name": "busy.jpg", "mimeType": "image/jpeg", "buffer": photo_bytes(20)}],
            )
            page.click("#submit")
            page.locator("#error[data-code='queue_full']").wait_for()
            assert f"The server is busy. Try again in {wait} s." in page.inner_text("#error")
            assert page.is_enabled("#submit")
            page.select_option("#lang", "zh-CN")  # the wait survives a language switch
            assert f"请在 {wait} 秒后重试" in page.inner_text("#error")
        finally:
            for job_id in queued:
                client.delete(f"/v1/jobs/{job_id}")


def test_unknown_jobs_and_missing_result_files_are_told_apart(
    web_server, open_page, tmp_path: Path
) -> None:
    page = open_page(f"{web_server.url}/?job=job_never_existed").page
    page.locator("#error[data-code='not_found']").wait_for()
    assert "The job was not found" in page.inner_text("#error")

    photo = tmp_path / "gone.jpg"
    photo.write_bytes(photo_bytes(6))
    job_id = web_server.submit_photo(photo, formats="spz")
    # The job exists but its scene file is gone from the disk (deleted by hand, say).
    out = web_server.data_dir / "jobs" / job_id / "out"
    removed = [path for path in out.iterdir() if path.suffix == ".spz"]
    assert removed
    for path in removed:
        path.unlink()
    assert httpx.get(f"{web_server.url}/v1/jobs/{job_id}/result?format=spz").status_code == 404
    page.goto(f"{web_server.url}/?job={job_id}")
    page.locator("#error[data-code='not_found']").wait_for()
    text = page.inner_text("#error")
    assert "The file is no longer on the server" in text and "job was not found" not in text
