"""Logs: one line per event; JSON on request; the request id on every line of a request."""

from __future__ import annotations

import json
import time

import httpx


def test_json_logs_carry_the_request_id(serve_process, tmp_path):
    server = serve_process(tmp_path / "data", "--workers", "0", "--log-format", "json")
    response = httpx.get(f"{server.url}/v1/jobs/missing", headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"
    deadline = time.monotonic() + 10
    while "trace-42" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()
    records = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert records, server.log()
    for record in records:
        assert {"time", "level", "logger", "request_id", "message"} <= set(record)
    mine = [r for r in records if r["request_id"] == "trace-42"]
    assert any("GET /v1/jobs/missing -> 404" in r["message"] for r in mine)


def test_text_logs_are_one_line_each(serve_process, tmp_path):
    server = serve_process(tmp_path / "data", "--workers", "0")
    httpx.post(f"{server.url}/v1/jobs", files={"file": ("x.jpg", b"not an image")})
    server.stop()
    lines = [line for line in server.log().splitlines() if "mlsharp.access" in line]
    assert any("POST /v1/jobs -> 422" in line for line in lines)
    assert "Traceback" not in server.log()
