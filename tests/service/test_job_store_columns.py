"""A job database made before the density/stats columns existed still opens and works."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mlsharp.service.jobs import JobRecord
from mlsharp.service.jobs.sqlite import SCHEMA as _SCHEMA
from mlsharp.service.jobs.sqlite import SQLiteJobStore


def test_an_older_database_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    old_schema = _SCHEMA.replace("    density TEXT NOT NULL DEFAULT '{}',\n", "").replace(
        "    stats TEXT NOT NULL DEFAULT '{}',\n", ""
    )
    assert "density" not in old_schema
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO jobs (id, status, stage, progress, created_at, updated_at, input_name, "
            "input_sha256, input_suffix, formats, outputs, timings, cached, attempts, "
            "cancel_requested, version) VALUES ('job_old', 'queued', 'queued', 0, 1, 1, 'a.jpg', "
            "'', '.jpg', '[\"ply\"]', '{}', '{}', 0, 0, 0, 0)"
        )
    store = SQLiteJobStore(path)
    try:
        old = store.get("job_old")
        assert old is not None and old.density == {} and old.stats == {}
        store.add(JobRecord(id="job_new", density={"max_splats": 5}))
        done = store.update("job_new", stats={"splats": 5, "bytes": {"ply": 10}})
        assert store.get("job_new") == done
        assert done.density == {"max_splats": 5} and done.stats["splats"] == 5
    finally:
        store.close()
