"""Bad requests over real HTTP: the right 4xx, one error schema, and a server that goes on.

Every error answer must be ``{error, message, status_code, path, timestamp, request_id}``
with ``status_code`` equal to the HTTP status, ``request_id`` equal to the ``X-Request-ID``
header and a ``message`` without tracebacks or server file paths (:func:`assert_error`).
Each bad input is sent on a fresh connection to a shared server, which must still answer
``/v1/health`` afterwards and, after all of them, still turn a good photo into a result.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.service.conftest import PHOTO, LiveServer, jpeg_bytes, run_live_server

ERROR_KEYS = {"error", "message", "status_code", "path", "timestamp", "request_id"}
#: Text that must never reach a client: tracebacks and where the server's files live.
LEAK_MARKERS = (
    "Traceback",
    'File "',
    str(REPO),
    sys.prefix,
    sys.base_prefix,
    tempfile.gettempdir(),
)
#: The body limit of the shared server (small, so oversize bodies are cheap to send).
BODY_LIMIT = 100_000


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, *, path: str | None = None
) -> dict:
    """Check that ``response`` is an error in the one schema; returns its body."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    assert body["status_code"] == status
    assert isinstance(body["error"], str) and re.fullmatch(r"[a-z][a-z0-9_]*", body["error"])
    if code is not None:
        assert body["error"] == code, body
    message = body["message"]
    assert isinstance(message, str) and message.strip(), body
    for marker in LEAK_MARKERS:
        assert marker not in message, f"{marker!r} leaked in {message!r}"
    assert body["path"] == (path if path is not None else response.request.url.path)
    stamp = dt.datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == dt.timedelta(0), body["timestamp"]
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 300
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_healthy(url: str) -> None:
    """The server answers ``/v1/health`` on a new connection."""
    response = httpx.get(f"{url}/v1/health", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


# --------------------------------------------------------------------------- inputs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A complete, valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels.

    Rows are compressed as they are made, so a 20000x20000 image costs about 50 kB and
    never exists uncompressed.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(height)]
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def grey_png(width: int, height: int) -> bytes:
    """A real greyscale PNG made by Pillow (compresses to a few kB)."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive holding ``members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _patch_zip(data: bytes, *, flag: int = 0, method: int | None = None) -> bytes:
    """Set general-purpose ``flag`` bits and/or the compression ``method`` of the only member."""
    patched = bytearray(data)
    central = patched.find(b"PK\x01\x02")
    for offset_flags, offset_method in ((6, 8), (central + 8, central + 10)):
        patched[offset_flags] |= flag
        if method is not None:
            patched[offset_method : offset_method + 2] = struct.pack("<H", method)
    return bytes(patched)


def encrypted_zip() -> bytes:
    """A zip whose image is marked as encrypted (zipfile wants a password)."""
    return _patch_zip(zip_of({"a.jpg": jpeg_bytes()}), flag=0x1)


def unsupported_method_zip() -> bytes:
    """A zip whose image uses compression method 99 (AES), which zipfile cannot read."""
    return _patch_zip(zip_of({"a.jpg": jpeg_bytes()}), method=99)


def corrupt_deflate_zip() -> bytes:
    """A deflated zip whose compressed bytes are garbled (zlib fails, not the CRC check)."""
    data = bytearray(zip_of({"a.jpg": jpeg_bytes(300, 300)}, zipfile.ZIP_DEFLATED))
    start = 30 + len("a.jpg")  # the local header, then the compressed data
    for index in range(start, start + 24):
        data[index] ^= 0xFF
    return bytes(data)


def _upload(name: str, content: bytes, field: str = "file", **extra: object) -> Callable:
    def send(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/jobs", files={field: (name, content, "image/jpeg")}, **extra)

    return send


def _batch(data: bytes) -> Callable:
    def send(client: httpx.Client) -> httpx.Response:
        return client.post("/v1/batches", files={"files": ("photos.zip", data, "application/zip")})

    return send


def _chunked_oversize(client: httpx.Client) -> httpx.Response:
    """A multipart upload over the limit sent without Content-Length (chunked)."""
    boundary = "mlsharp-test-boundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for _ in range(20):
            yield b"\xff" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    return client.post(
        "/v1/jobs",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


_HALF_JPEG = PHOTO.read_bytes()[: PHOTO.stat().st_size // 2]
#: (id, request, expected status, expected error code)
BAD_REQUESTS = [
    pytest.param(_upload("photo.jpg", b""), 422, "empty_file", id="empty-file"),
    pytest.param(_upload("photo.jpg", _HALF_JPEG), 422, "invalid_image", id="truncated-jpeg"),
    pytest.param(
        _upload("photo.jpg", b"this is a text file, not a photo\n" * 20),
        422,
        "invalid_image",
        id="text-named-jpg",
    ),
    pytest.param(
        _upload("big.png", grey_png(2000, 2000)), 413, "image_too_large", id="too-many-pixels"
    ),
    pytest.param(
        _upload("big.jpg", b"\xff" * (2 * BODY_LIMIT)),
        413,
        "payload_too_large",
        id="body-over-limit-content-length",
    ),
    pytest.param(
        _chunked_oversize,
        413,
        "payload_too_large",
        id="body-over-limit-chunked",
    ),
    pytest.param(
        _upload("photo.jpg", jpeg_bytes(), field="image"),
        422,
        "validation_error",
        id="wrong-field-name",
    ),
    pytest.param(lambda c: c.post("/v1/jobs"), 422, "validation_error", id="no-body"),
    pytest.param(
        lambda c: c.post("/v1/jobs", json={"file": "photo.jpg"}),
        422,
        "validation_error",
        id="json-instead-of-multipart",
    ),
    pytest.param(
        _upload("photo.jpg", jpeg_bytes(), data={"focal_mm": "-5"}),
        422,
        "validation_error",
        id="negative-focal",
    ),
    pytest.param(
        _upload("photo.jpg", jpeg_bytes(), data={"formats": "ply,obj-of-dreams"}),
        422,
        "invalid_format",
        id="unknown-format",
    ),
    pytest.param(
        _upload("photo.jpg", jpeg_bytes(), headers={"Idempotency-Key": "has spaces"}),
        400,
        "invalid_idempotency_key",
        id="bad-idempotency-key",
    ),
    pytest.param(
        lambda c: c.get("/v1/jobs", params={"limit": 0}),
        422,
        "validation_error",
        id="list-limit-zero",
    ),
    pytest.param(lambda c: c.get("/v1/jobs/job_doesnotexist"), 404, "not_found", id="no-job"),
    pytest.param(lambda c: c.get("/v2/nothing-here"), 404, "not_found", id="unknown-route"),
    pytest.param(lambda c: c.put("/v1/jobs"), 405, "method_not_allowed", id="wrong-method"),
    pytest.param(
        _batch(zip_of({"notes.txt": b"no photos here"})), 422, "empty_batch", id="zip-no-images"
    ),
    pytest.param(_batch(b"PK\x03\x04" + b"\x00" * 200), 422, "invalid_zip", id="zip-garbage"),
    pytest.param(_batch(encrypted_zip()), 422, "invalid_zip", id="zip-encrypted"),
    pytest.param(
        _batch(unsupported_method_zip()),
        422,
        "invalid_zip",
        id="zip-unknown-compression",
    ),
    pytest.param(_batch(corrupt_deflate_zip()), 422, "invalid_zip", id="zip-corrupt-deflate"),
]


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[LiveServer]:
    """One server for every bad input: 100 kB body limit, 1 megapixel image limit."""
    with run_live_server(
        tmp_path_factory.mktemp("errors"),
        tiny_checkpoint,
        max_upload_bytes=BODY_LIMIT,
        max_pixels=1_000_000,
    ) as live:
        yield live


@pytest.fixture()
def client(shared: LiveServer) -> Iterator[httpx.Client]:
    """A client of its own, so a connection the server closes affects one test only."""
    with httpx.Client(base_url=shared.url, timeout=60) as own:
        yield own


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("send", "status", "code"), BAD_REQUESTS)
def test_bad_request_gets_its_error_and_server_goes_on(
    shared: LiveServer, client: httpx.Client, send: Callable, status: int, code: str
) -> None:
    """Each bad input is answered with its status and code in the error schema."""
    try:
        assert_error(send(client), status, code)
    finally:
        assert_healthy(shared.url)


@pytest.mark.parametrize("size", [(20_000, 20_000), (8_000, 8_000)], ids=["400MP", "64MP"])
def test_huge_png_is_refused_under_default_pixel_limit(
    server: LiveServer, size: tuple[int, int]
) -> None:
    """A valid PNG over the default 50 MP limit is 413 image_too_large, never decoded.

    400 MP also trips Pillow's own bomb guard; 64 MP only the service's limit.
    """
    data = huge_png(*size)
    assert len(data) < 200_000  # black 1-bit rows compress about 1000:1
    body = assert_error(server.submit(data, name="huge.png"), 413, "image_too_large")
    assert "huge.png" in body["message"]
    assert_healthy(server.url)


def test_queue_full_is_503_with_retry_after(live_server) -> None:
    """With max_queue=2 and no workers the third job is 503 queue_full with Retry-After."""
    with live_server(workers=0, max_queue=2) as running:
        for shade in (10, 20):
            assert running.submit(jpeg_bytes(color=(shade, shade, shade))).status_code == 202
        refused = running.submit(jpeg_bytes(color=(30, 30, 30)))
        assert_error(refused, 503, "queue_full")
        assert re.fullmatch(r"[1-9][0-9]*", refused.headers["retry-after"])
        assert_healthy(running.url)
        jobs = running.client.get("/v1/jobs").json()
        assert jobs["total"] == 2  # the refused photo left no job behind
        # Canceling a queued job makes room again.
        assert running.client.delete(f"/v1/jobs/{jobs['items'][0]['id']}").status_code == 202
        assert running.submit(jpeg_bytes(color=(30, 30, 30))).status_code == 202


def test_wrong_method_names_the_allowed_ones(client: httpx.Client) -> None:
    """A 405 answer says which methods the resource has (``Allow``)."""
    response = client.put("/v1/jobs")
    assert_error(response, 405, "method_not_allowed")
    allowed = {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()}
    # Starlette names the methods of the first route on the path, so GET or POST (or both).
    assert allowed and allowed <= {"GET", "POST", "HEAD"}, response.headers


def test_sane_request_id_is_echoed(client: httpx.Client) -> None:
    """A client's well-formed X-Request-ID comes back in the header and in error bodies."""
    ok = client.get("/v1/health", headers={"X-Request-ID": "trace-0042.a:b_c"})
    assert ok.headers["x-request-id"] == "trace-0042.a:b_c"
    missing = client.get("/v1/jobs/job_nope", headers={"X-Request-ID": "req-404"})
    assert assert_error(missing, 404, "not_found")["request_id"] == "req-404"
    invalid = client.post("/v1/jobs", headers={"X-Request-ID": "req-422"})
    assert assert_error(invalid, 422, "validation_error")["request_id"] == "req-422"


@pytest.mark.parametrize(
    "offered",
    ["has spaces in it", "x" * 500, "semi;colon", ""],
    ids=["spaces", "500", ";", "empty"],
)
def test_garbage_request_id_is_replaced(client: httpx.Client, offered: str) -> None:
    """An X-Request-ID with odd characters, or too long, is replaced by a fresh id."""
    response = client.get("/v2/unknown", headers={"X-Request-ID": offered})
    body = assert_error(response, 404, "not_found")
    assert body["request_id"] != offered
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", body["request_id"])


def test_generated_request_ids_differ(client: httpx.Client) -> None:
    """Requests without an id get distinct ones."""
    ids = {client.get("/v1/health").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def _add_failing_route(running: LiveServer) -> str:
    """A test-only route that raises an unexpected exception (a stand-in for any bug)."""

    def explode() -> None:
        raise RuntimeError(f"internal detail {REPO}/secret.py should stay in the log")

    running.app.add_api_route("/_test/explode", explode)
    return "/_test/explode"


def test_unexpected_exception_is_a_generic_500(live_server) -> None:
    """A bug is answered with a generic 500 in the error schema, with no internal details."""
    with live_server(workers=0) as running:
        path = _add_failing_route(running)
        response = running.client.get(path)
        body = assert_error(response, 500, "internal_error")
        assert "internal detail" not in body["message"]
        assert "secret.py" not in response.text
        # The same keep-alive connection goes on serving.
        assert running.client.get("/v1/health").status_code == 200


def test_unexpected_exception_keeps_the_request_id(live_server) -> None:
    """The 500 answer names the request id the client sent, like every other error."""
    with live_server(workers=0) as running:
        path = _add_failing_route(running)
        response = httpx.get(running.url + path, headers={"X-Request-ID": "trace-500"})
        assert assert_error(response, 500, "internal_error")["request_id"] == "trace-500"


def test_good_photo_succeeds_after_every_bad_input(shared: LiveServer) -> None:
    """After all bad inputs the same server still runs jobs: none crashed it or lost a job."""
    before = shared.submit(jpeg_bytes(color=(11, 22, 33)))
    assert before.status_code == 202, before.text
    for case in BAD_REQUESTS:
        send = case.values[0]
        with httpx.Client(base_url=shared.url, timeout=60) as own:
            send(own)
    assert_healthy(shared.url)
    after = shared.submit(jpeg_bytes(color=(44, 55, 66)))
    assert after.status_code == 202, after.text
    for job_id in (before.json()["id"], after.json()["id"]):
        job = shared.wait_job(job_id, timeout=120)
        assert job["status"] == "succeeded", job
        result = shared.client.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 200
        assert result.content.startswith(b"ply")
