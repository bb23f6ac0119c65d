"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis 4).

Every operation of the live server's ``/openapi.json`` gets Hypothesis-generated requests,
valid ones (``positive``) and, where the operation has inputs that can be invalid, invalid
ones (``negative``), plus schemathesis's deterministic coverage cases (boundary values,
missing and wrong-typed inputs, unexpected methods). No response may be a 5xx; each must
match the status codes, media types and response schemas the document declares; invalid
requests must be refused (4xx).

The server runs with ``workers=0`` (fuzzed uploads never reach the model) and no rate
limit. Operations with ``{job_id}``, ``{batch_id}`` or ``{webhook_id}`` are also fuzzed
with the ids of a real job, batch and webhook so the "found" code paths run, not only 404s.

``schemathesis.pytest.from_fixture`` is not used: under pytest 9 it fails with
``AttributeError: 'Function' object has no attribute '_nodeid'``. Instead each operation
is a pytest parameter and the test runs the operation's Hypothesis strategy itself.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import LiveServer, jpeg_bytes, run_live_server

#: Generated requests per operation and mode; the whole file stays well under a minute.
MAX_EXAMPLES = 40
#: Seconds one fuzzed request may take (a hung request fails the test instead of stalling).
REQUEST_TIMEOUT = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
#: A public address given literally, so the SSRF guard accepts it without DNS; no event
#: is ever delivered (with workers=0 no job finishes).
PUBLIC_HOOK_URL = "http://93.184.216.34/hook"


def _document() -> dict[str, Any]:
    """The OpenAPI document of the app, built without starting it (to parametrize tests)."""
    from mlsharp.config import Settings
    from mlsharp.service.app import create_app

    settings = Settings.model_construct(workers=0)  # defaults; reads no environment
    return create_app(settings).openapi()


def _operations() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """All (METHOD, path) pairs, and those with an input that a request can get wrong.

    Path parameters are free strings here, so an operation whose only inputs are path
    parameters has nothing a negative request could violate.
    """
    every, negatable = [], []
    for path, item in _document()["paths"].items():
        for method, operation in item.items():
            pair = (method.upper(), path)
            every.append(pair)
            params = operation.get("parameters", [])
            if "requestBody" in operation or any(p["in"] != "path" for p in params):
                negatable.append(pair)
    return sorted(every), sorted(negatable)


ALL_OPERATIONS, NEGATABLE_OPERATIONS = _operations()
CASES = [
    pytest.param(method, path, GenerationMode.POSITIVE, id=f"{method} {path} positive")
    for method, path in ALL_OPERATIONS
] + [
    pytest.param(method, path, GenerationMode.NEGATIVE, id=f"{method} {path} negative")
    for method, path in NEGATABLE_OPERATIONS
]


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[LiveServer]:
    """One API-only server (no workers, no rate limit, a roomy queue, room for the
    webhooks every fuzzed registration makes) for the module."""
    with run_live_server(
        tmp_path_factory.mktemp("fuzz"),
        tiny_checkpoint,
        workers=0,
        max_queue=1_000_000,
        webhook_max_per_key=1000,
        rate_limit=None,
    ) as live:
        yield live


@pytest.fixture(scope="module")
def live_schema(fuzz_server: LiveServer) -> Any:
    """The schema as the live server publishes it."""
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


@pytest.fixture()
def real_ids(fuzz_server: LiveServer) -> dict[str, str]:
    """Ids of a queued job, a canceled job, a batch and a webhook that exist right now.

    The event stream of a queued job never ends on a server without workers, so
    ``/events`` gets the canceled one (its stream ends at once).
    """
    client = fuzz_server.client
    job = fuzz_server.submit(jpeg_bytes(color=(1, 2, 3)))
    assert job.status_code == 202, job.text
    canceled = fuzz_server.submit(jpeg_bytes(color=(7, 8, 9)))
    assert client.delete(f"/v1/jobs/{canceled.json()['id']}").status_code == 202
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("a.jpg", jpeg_bytes(color=(4, 5, 6)))
    batch = client.post(
        "/v1/batches", files={"files": ("photos.zip", archive.getvalue(), "application/zip")}
    )
    assert batch.status_code == 202, batch.text
    hook = client.post("/v1/webhooks", json={"url": PUBLIC_HOOK_URL})
    assert hook.status_code == 201, hook.text
    return {
        "job_id": job.json()["id"],
        "canceled_job_id": canceled.json()["id"],
        "batch_id": batch.json()["id"],
        "webhook_id": hook.json()["id"],
    }


def test_fuzzed_operations_are_the_live_ones(live_schema: Any) -> None:
    """The parametrization (from the app) covers exactly the live server's operations."""
    live = sorted(
        (result.ok().method.upper(), result.ok().path)
        for result in live_schema.get_all_operations()
    )
    assert live == ALL_OPERATIONS


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_never_fails_and_matches_its_schema(
    live_schema: Any,
    fuzz_server: LiveServer,
    real_ids: dict[str, str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    """Generated requests never get a 5xx, and every answer is what the document says."""
    operation = live_schema[path][method]
    strategies = [operation.as_strategy(generation_mode=mode)]
    known = {name: value for name, value in real_ids.items() if f"{{{name}}}" in path}
    if path.endswith("/events"):
        known["job_id"] = real_ids["canceled_job_id"]
    if known:
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=known))

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT)

    try:
        fuzz()
    except Unsatisfiable:
        pytest.fail(f"no {mode.value} request could be generated for {method} {path}")
    assert fuzz_server.client.get("/v1/health").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"), ALL_OPERATIONS, ids=[f"{m} {p}" for m, p in ALL_OPERATIONS]
)
def test_operation_coverage_cases(
    live_schema: Any, fuzz_server: LiveServer, method: str, path: str
) -> None:
    """Schemathesis's deterministic coverage cases (boundaries, missing and wrong-typed
    inputs, unexpected methods) pass the same checks."""
    operation = live_schema[path][method]
    cases = live_schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=live_schema.config.generation_for(operation=operation),
    )
    sent = 0
    for case in cases:
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT)
        sent += 1
    assert sent > 0
    assert fuzz_server.client.get("/v1/health").status_code == 200
