"""The service's edge against hostile clients, over real sockets to a live server.

* API keys and rate limits are checked before a request's body is read, and wrong keys
  are throttled per client address (in process, and in Redis in scale-out mode).
* Slow clients: request headers and bodies have deadlines.
* ``Range`` headers with absurd numbers, ``If-None-Match: *`` and weak ETags.
* A batch archive being downloaded survives the deletion of its jobs.
* ``%0A`` in a URL path cannot forge a line of the text log.
"""

from __future__ import annotations

import contextlib
import io
import socket
import time
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from tests.service.conftest import LiveServer, jpeg_bytes
from tests.service.test_api_batches import post_batch, wait_batch
from tests.service.test_api_jobs import assert_error, run_job

K1 = {"X-API-Key": "k1"}


@contextlib.contextmanager
def raw_connection(server: LiveServer, timeout: float = 20.0) -> Iterator[socket.socket]:
    """A plain TCP connection to the server (to send exactly the bytes a test wants)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        yield sock


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet."""
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"}" in chunk:
                break
    return b"".join(chunks)


def upload_headers(path: str, length: int, headers: dict[str, str]) -> bytes:
    """The request line and headers of a multipart upload of ``length`` bytes (no body)."""
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: multipart/form-data; boundary=b",
        f"Content-Length: {length}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("headers", "status"), [({}, b"401"), ({"X-API-Key": "wrong"}, b"403")], ids=["none", "wrong"]
)
def test_the_key_is_checked_before_the_body_is_read(
    live_server, headers: dict[str, str], status: bytes
) -> None:
    """A 40 MB upload without a (valid) key is refused on its headers alone: the client
    never sends the body and still gets its answer (it waited for the whole body)."""
    with live_server(api_keys=["k1"], workers=0) as server, raw_connection(server) as sock:
        sock.sendall(upload_headers("/v1/jobs", 40_000_000, headers))
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"connection: close" in answer.lower()


def test_the_rate_limit_is_checked_before_the_body_is_read(live_server) -> None:
    """Over the rate limit, an upload is 429 before its body is read; a request checked
    before its body takes one token, not two."""
    with live_server(api_keys=["k1"], rate_limit="2/minute", workers=0) as server:
        assert server.client.post("/v1/cache/clear", headers=K1).status_code == 200
        assert server.client.get("/v1/jobs", headers=K1).status_code == 200
        with raw_connection(server) as sock:
            sock.sendall(upload_headers("/v1/batches", 40_000_000, K1))
            answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_wrong_keys_are_throttled_per_client_address(live_server, request, backend) -> None:
    """After ``auth_failure_limit`` wrong keys an address gets 429 for every key, the
    right one included (no more guesses are evaluated); other addresses are unaffected.
    In scale-out mode the count lives in Redis."""
    extra = {}
    if backend == "redis":
        extra = {"queue": request.getfixturevalue("redis_server").url}
    with live_server(api_keys=["k1"], auth_failure_limit="3/minute", workers=0, **extra) as server:
        for _ in range(3):
            assert_error(server.client.get("/v1/jobs", headers={"X-API-Key": "guess"}), 403)
        throttled = server.client.get("/v1/jobs", headers={"X-API-Key": "guess"})
        assert_error(throttled, 429, "rate_limited")
        assert 1 <= int(throttled.headers["retry-after"]) <= 60
        assert_error(server.client.get("/v1/jobs", headers=K1), 429, "rate_limited")
        assert_error(server.submit(headers={"X-API-Key": "guess"}), 429, "rate_limited")
        transport = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=server.url, transport=transport) as elsewhere:
            assert elsewhere.get("/v1/jobs", headers=K1).status_code == 200


def test_a_trusted_proxy_names_the_client(live_server) -> None:
    """With trusted_proxies, wrong keys count against the address in X-Forwarded-For, so
    one client behind the proxy cannot lock out the others; untrusted peers' headers are
    ignored."""
    settings = {"api_keys": ["k1"], "auth_failure_limit": "2/minute", "workers": 0}
    with live_server(trusted_proxies=["127.0.0.1"], **settings) as server:
        guesser = {"X-Forwarded-For": "203.0.113.5", "X-API-Key": "guess"}
        for _ in range(2):
            assert_error(server.client.get("/v1/jobs", headers=guesser), 403)
        assert_error(server.client.get("/v1/jobs", headers=guesser), 429)
        other = {"X-Forwarded-For": "203.0.113.6", **K1}
        assert server.client.get("/v1/jobs", headers=other).status_code == 200
    with live_server(**settings) as server:  # no trusted proxy: the header means nothing
        for address in ("203.0.113.5", "203.0.113.6"):
            guess = {"X-Forwarded-For": address, "X-API-Key": "guess"}
            assert_error(server.client.get("/v1/jobs", headers=guess), 403)
        assert_error(server.client.get("/v1/jobs", headers=K1), 429)


def test_slow_request_headers_are_cut_off(live_server) -> None:
    """Headers that never end: the connection is closed after header_timeout_seconds."""
    with live_server(workers=0, header_timeout_seconds=1) as server, raw_connection(server) as sock:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert sock.recv(1024) == b""  # closed by the server (a timeout raises instead)
        # A complete request on a new connection is served as usual.
        assert server.client.get("/v1/health").status_code == 200


def test_a_slow_request_body_is_408(live_server) -> None:
    """A body that stops arriving is answered 408 request_timeout after
    body_timeout_seconds, in the error schema."""
    with live_server(workers=0, body_timeout_seconds=1) as server, raw_connection(server) as sock:
        sock.sendall(upload_headers("/v1/jobs", 100_000, {}) + b"--b\r\n")
        answer = read_response(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b'"error":"request_timeout"' in body


def test_absurd_ranges_are_400(server: LiveServer) -> None:
    """Thousands of digits, a digit that is not ASCII (Latin-1 "²", which str.isdigit
    takes) or too many parts: 400 invalid_range (the digits were a 500)."""
    url = run_job(server, jpeg_bytes(color=(3, 33, 133)))["links"]["results"]["ply"]
    for value in (
        b"bytes=" + b"9" * 5000 + b"-",
        b"bytes=0-" + b"1" * 5000,
        "bytes=\u00b2-".encode("latin-1"),
        b"bytes=" + b"0-1," * 40 + b"2-3",
    ):
        response = server.client.get(url, headers={"Range": value})
        assert_error(response, 400, "invalid_range")
    assert server.client.get(url, headers={"Range": "bytes=0-9"}).status_code == 206


def test_if_none_match_star_and_weak_etags_are_304(server: LiveServer) -> None:
    """RFC 9110: ``*`` matches any current representation; If-None-Match compares weakly."""
    url = run_job(server, jpeg_bytes(color=(4, 44, 144)))["links"]["results"]["ply"]
    etag = server.client.get(url).headers["etag"]
    for header in ("*", f"W/{etag}", f'"other", W/{etag}', f'"other",{etag}'):
        response = server.client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.headers["etag"] == etag
    assert server.client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200


def test_deleting_jobs_during_their_archive_download_does_not_cut_it(server: LiveServer) -> None:
    """The archive's files are opened before streaming: deleting the jobs mid-download
    leaves the zip complete."""
    created = post_batch(
        server, ("a.jpg", jpeg_bytes(color=(60, 1, 2))), ("b.jpg", jpeg_bytes(color=(1, 60, 2)))
    ).json()
    batch = wait_batch(server, created["id"])
    assert batch["counts"]["succeeded"] == 2
    with server.client.stream("GET", f"/v1/batches/{created['id']}/archive") as response:
        assert response.status_code == 200
        chunks = response.iter_raw(64 * 1024)
        received = [next(chunks)]
        for job in batch["jobs"]:
            assert server.client.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert not any((server.data_dir / "jobs" / j["id"]).exists() for j in batch["jobs"])
        received.extend(chunks)
    with zipfile.ZipFile(io.BytesIO(b"".join(received))) as archive:
        assert sorted(archive.namelist()) == ["a.ply", "b.ply"]
        assert archive.testzip() is None


def test_a_newline_in_the_path_cannot_forge_a_log_line(serve_process, tmp_path) -> None:
    """``%0A`` in the URL is decoded into the path the access log writes: it is escaped,
    so the log has no line the client wrote."""
    server = serve_process(tmp_path / "data", "--workers", "0")
    forged = "2026-12-06 12:00:00,000 INFO    [-] mlsharp.access: GET /admin -> 200 in 1.0 ms"
    path = "/v1/jobs/x%0A" + forged.replace(" ", "%20").replace("[", "%5B").replace("]", "%5D")
    assert httpx.get(server.url + path).status_code == 404
    deadline = time.monotonic() + 10
    while "GET /v1/jobs/x" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()
    lines = server.log().splitlines()
    assert not any(line.startswith("2026-12-06 12:00:00") for line in lines), server.log()
    assert any("GET /v1/jobs/x\\n2026-12-06 12:00:00" in line for line in lines), server.log()
