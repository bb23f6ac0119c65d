"""A model that cannot be loaded is reported at /v1/ready and in the log, never a silent 503."""

from __future__ import annotations

import logging

import pytest
import torch

from mlsharp.engine import Engine


class _Records(logging.Handler):
    """Collects the records of one logger (the service's loggers do not propagate)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def service_log():
    logger = logging.getLogger("mlsharp.service")
    handler = _Records()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_gpu_that_is_not_there_is_reported_at_ready(live_server, service_log):
    with live_server(device="cuda:7") as server:
        ready = server.client.get("/v1/ready")
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert "device 'cuda' requested but torch sees no CUDA/ROCm GPU" in ready.json()["error"]
    errors = [r.getMessage() for r in service_log if r.levelno >= logging.ERROR]
    assert any("could not be loaded" in e and "cuda" in e for e in errors), errors


def test_an_unexpected_load_failure_is_reported_at_ready(live_server, service_log, monkeypatch):
    # What a GPU can raise while the weights move (here injected: this machine has none).
    def fail(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")

    monkeypatch.setattr(Engine, "load", classmethod(fail))
    with live_server() as server:
        ready = server.client.get("/v1/ready")
        job = server.submit().json()
        assert server.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert ready.status_code == 503
    assert ready.json()["error"] == (
        "RuntimeError: CUDA error: an illegal memory access was encountered"
    )
    logged = [r for r in service_log if r.levelno >= logging.ERROR]
    assert logged and logged[-1].exc_info is not None  # the traceback goes to the log
