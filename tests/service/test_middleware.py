"""The request middleware keeps its promises even when a handler has a bug."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

from mlsharp.service.body import BodyLimitMiddleware
from mlsharp.service.http_errors import install_error_handlers
from mlsharp.service.metrics import Metrics
from mlsharp.service.middleware import RequestContextMiddleware
from tests.service.conftest import free_port


def test_a_bug_becomes_a_500_in_the_schema_with_the_request_id(caplog):
    """An exception no handler expects: generic 500, request id kept, server still up."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise ZeroDivisionError("secret internal detail")

    @app.get("/fine")
    def fine() -> dict:
        return {"ok": True}

    metrics = Metrics()
    app.add_middleware(BodyLimitMiddleware, max_bytes=1000)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            response = client.get("/boom", headers={"X-Request-ID": "trace-123"})
            assert response.status_code == 500
            body = response.json()
            assert body["error"] == "internal_error"
            assert body["request_id"] == "trace-123"
            assert response.headers["x-request-id"] == "trace-123"
            assert "secret internal detail" not in response.text
            assert "Traceback" not in response.text
            assert client.get("/fine").json() == {"ok": True}
            too_big = client.post("/fine", content=b"x" * 2000)
            assert too_big.status_code == 413
            assert too_big.json()["error"] == "payload_too_large"
        text = metrics.render().decode()
        assert 'route="/boom",status="500"' in text
    finally:
        server.should_exit = True
        thread.join(10)
