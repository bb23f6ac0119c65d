"""Damaged data in the data directory: one malformed job row, a corrupt or empty database.

Regression tests of issue 12 (defect 8): one malformed row made ``GET /v1/jobs`` answer
500 for every listing (and, queued, stopped the worker); a corrupt database stopped
``mlsharp serve`` with a 60-line traceback, and a zero-byte one silently became a new,
empty database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.service.conftest import free_port, jpeg_bytes

#: Columns of a job row that decode to nothing sensible, one per way a row can be bad.
MALFORMED = [
    {"status": "exploded"},
    {"formats": "{not json"},
    {"timings": "[1, 2"},
    {"created_at": "yesterday"},
]


def _insert_malformed_row(db_path: Path, job_id: str, bad: dict[str, object]) -> None:
    """Copy an existing row under ``job_id`` with the ``bad`` values, straight in SQLite."""
    with sqlite3.connect(db_path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
        template = db.execute("SELECT * FROM jobs LIMIT 1").fetchone()
        values = dict(zip(columns, template, strict=True))
        values.update({"id": job_id, "status": "queued", "created_at": 0.0, **bad})
        marks = ", ".join("?" for _ in columns)
        db.execute(
            f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({marks})",
            [values[c] for c in columns],
        )


@pytest.mark.parametrize("bad", MALFORMED, ids=lambda bad: next(iter(bad)))
def test_a_malformed_row_is_skipped_not_a_500(live_server, bad: dict[str, object]) -> None:
    """The listing still answers with every other job; the bad job is not found; a
    worker goes on with the queue behind it."""
    with live_server(workers=0) as api:
        first = api.submit(jpeg_bytes(color=(1, 2, 3))).json()["id"]
        _insert_malformed_row(api.data_dir / "jobs.sqlite3", "job_broken", bad)
        listing = api.client.get("/v1/jobs")
        assert listing.status_code == 200, listing.text
        assert [job["id"] for job in listing.json()["items"]] == [first]
        assert api.client.get("/v1/jobs/job_broken").status_code == 404
        assert api.client.get("/v1/stats").status_code == 200
    # A worker on the same data: the malformed row is the oldest queued one.
    with live_server() as worker:
        job = worker.wait_job(first)
        assert job["status"] == "succeeded", job
        assert worker.client.get("/v1/jobs").status_code == 200


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("jobs.sqlite3", b"this is not a database, just bytes" * 200, "is corrupt"),
        ("jobs.sqlite3", b"", "is empty (0 bytes)"),
        ("webhooks.sqlite3", b"SQLite format 3\x00" + b"\xff" * 4000, "is corrupt"),
    ],
    ids=["garbage", "zero-bytes", "bad-header"],
)
def test_a_damaged_database_stops_serve_with_one_line(
    run_cli, tiny_checkpoint, tmp_path: Path, name: str, data: bytes, says: str
) -> None:
    """``mlsharp serve`` refuses to start: one line naming the file and what to do, no
    traceback, and the file is left as it was."""
    data_dir = tmp_path / "data"
    damaged = _write(data_dir / name, data)
    result = run_cli(
        "serve",
        *("--data-dir", str(data_dir), "--port", str(free_port()), "--workers", "0"),
        *("--preset", "tiny", "--checkpoint", str(tiny_checkpoint), "--offline"),
    )
    assert result.returncode == 8, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mlsharp: error: ")
    assert str(damaged) in lines[0] and says in lines[0]
    assert "backup" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert damaged.read_bytes() == data


def test_a_corrupt_cache_index_is_rebuilt(live_server, tmp_path: Path) -> None:
    """The result cache is only a cache: a corrupt index is set aside and started anew."""
    index = _write(tmp_path / "data" / "cache" / "index.sqlite3", b"\x00garbage" * 100)
    with live_server(workers=0) as server:
        assert server.client.get("/v1/cache").json()["size"] == 0
    assert index.read_bytes() != b"\x00garbage" * 100
    assert list(index.parent.glob("index.sqlite3.corrupt-*"))


def test_an_earlier_versions_webhook_database_is_merged(tmp_path: Path) -> None:
    """Webhooks and pending deliveries kept in ``webhooks.sqlite3`` by an earlier version
    move into the one database at start; the old file is kept, renamed."""
    from mlsharp.config import Settings
    from mlsharp.service.backends import build_state
    from mlsharp.service.webhooks import WebhookService
    from mlsharp.service.webhooks.sqlite import SQLiteWebhookStore

    data_dir = tmp_path / "data"
    old = WebhookService(SQLiteWebhookStore(data_dir / "webhooks.sqlite3"), allow_private=True)
    hook = old.create("http://127.0.0.1:9/hook", ["job.succeeded"])
    [pending] = old.publish("job.succeeded", {"id": "job_old"})
    old.close()
    state = build_state(Settings(data_dir=data_dir, workers=0))
    try:
        assert state.webhooks.get(hook.id) == hook
        [delivery] = state.webhooks.deliveries(hook.id)
        assert delivery.id == pending and delivery.status == "pending"
    finally:
        state.close()
    assert not (data_dir / "webhooks.sqlite3").exists()
    assert (data_dir / "webhooks.sqlite3.merged").is_file()
    state = build_state(Settings(data_dir=data_dir, workers=0))  # once only
    try:
        assert [h.id for h in state.webhooks.registered()] == [hook.id]
    finally:
        state.close()
