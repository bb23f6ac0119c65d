"""Webhooks: signing, SSRF guard, and delivery against real loopback HTTP servers."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlsharp._version import __version__
from mlsharp.errors import BadRequest, NotFound
from mlsharp.service.webhooks import (
    EVENTS,
    Delivery,
    WebhookService,
    check_url,
    new_secret,
    sign,
    verify,
)
from mlsharp.service.webhooks.sqlite import SQLiteWebhookStore

# The published Standard Webhooks test vector.
VEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VEC_TS = 1614265330
VEC_BODY = b'{"test": 2432232314}'
VEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _vec_headers(sig: str = VEC_SIG, ts: int = VEC_TS) -> dict[str, str]:
    return {"webhook-id": VEC_ID, "webhook-timestamp": str(ts), "webhook-signature": sig}


# --------------------------------------------------------------------------- receiver


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1; ``respond(n)`` gives the status of the n-th request."""

    url: str
    requests: list[Received] = field(default_factory=list)
    respond: Callable[[int], int] = lambda n: 204

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Poll until at least ``count`` requests arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                return True
            time.sleep(0.01)
        return len(self.requests) >= count


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    """Start a ThreadingHTTPServer recording every POST; shut down at teardown."""
    lock = threading.Lock()
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            rec = state["r"]
            with lock:
                rec.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                n = len(rec.requests)
            code = rec.respond(n)
            self.send_response(code)
            if 300 <= code < 400:
                self.send_header("location", rec.url + "redirected")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    rec = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook/")
    state["r"] = rec
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture()
def make_service(tmp_path: Path) -> Iterator[Callable[..., WebhookService]]:
    """Build WebhookServices on one db (loopback allowed, fast backoff); stopped at teardown."""
    made: list[WebhookService] = []

    def make(**kwargs: object) -> WebhookService:
        opts: dict[str, object] = {
            "allow_private": True,
            "backoff_seconds": 0.05,
            "timeout_seconds": 2.0,
        }
        opts.update(kwargs)
        svc = WebhookService(SQLiteWebhookStore(tmp_path / "service.db"), **opts)  # type: ignore[arg-type]
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.close()


def _only_delivery(svc: WebhookService, webhook_id: str) -> Delivery:
    items = svc.deliveries(webhook_id)
    assert len(items) == 1
    return items[0]


# --------------------------------------------------------------------------- signing


def test_sign_matches_standard_webhooks_vector() -> None:
    assert sign(VEC_SECRET, VEC_ID, VEC_TS, VEC_BODY) == VEC_SIG


def test_verify_vector_and_rejections() -> None:
    assert verify(VEC_SECRET, _vec_headers(), VEC_BODY, now=VEC_TS)
    # Case-insensitive header names and several signatures (rotation).
    mixed = {
        "Webhook-Id": VEC_ID,
        "WEBHOOK-TIMESTAMP": str(VEC_TS),
        "Webhook-Signature": f"v1,bm90IGl0 {VEC_SIG}",
    }
    assert verify(VEC_SECRET, mixed, VEC_BODY, now=VEC_TS + 10)
    assert not verify(VEC_SECRET, _vec_headers(), b'{"test": 2432232315}', now=VEC_TS)
    assert not verify(new_secret(), _vec_headers(), VEC_BODY, now=VEC_TS)
    assert not verify(VEC_SECRET, _vec_headers(), VEC_BODY, now=VEC_TS + 301)
    assert not verify(VEC_SECRET, _vec_headers(), VEC_BODY, now=VEC_TS - 301)
    assert not verify(VEC_SECRET, _vec_headers(sig="v2," + VEC_SIG[3:]), VEC_BODY, now=VEC_TS)
    assert not verify(VEC_SECRET, {"webhook-id": VEC_ID}, VEC_BODY, now=VEC_TS)
    assert not verify(VEC_SECRET, _vec_headers() | {"webhook-timestamp": "x"}, VEC_BODY)


def test_new_secret_format() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(secret) == len("whsec_") + 32
    assert secret != new_secret()
    assert sign(secret, "msg_x", 1, b"{}").startswith("v1,")


# --------------------------------------------------------------------------- SSRF guard

REFUSED_URLS = [
    "http://127.0.0.1/",
    "http://localhost:8080/hook",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://0.0.0.0/",
    "http://[::ffff:127.0.0.1]/",
    "http://2130706433/",  # 127.0.0.1 as a decimal number
    "http://224.0.0.1/",
    "ftp://example.com/",
    "http://user:pw@example.com/",
    "http:///nohost",
    "http://no-such-host.invalid/",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_create_refuses_unsafe_urls(make_service: Callable[..., WebhookService], url: str) -> None:
    svc = make_service(allow_private=False)
    with pytest.raises(BadRequest) as info:
        svc.create(url, ["job.succeeded"])
    assert info.value.http_status == 422
    assert info.value.code == "webhook_url_refused"
    assert "\n" not in str(info.value)
    assert svc.registered() == []


def test_allow_private_accepts_loopback(make_service: Callable[..., WebhookService]) -> None:
    svc = make_service(allow_private=True)
    hook = svc.create("http://127.0.0.1:9/hook", ["job.failed"])
    assert hook.url == "http://127.0.0.1:9/hook"
    # Structural checks still apply with allow_private.
    for url in ("ftp://127.0.0.1/", "http://u:p@127.0.0.1/"):
        with pytest.raises(BadRequest):
            svc.create(url, ["job.failed"])


def test_check_url_accepts_public_literal() -> None:
    check_url("http://93.184.216.34/", allow_private=False)
    check_url("https://[2606:2800:220:1:248:1893:25c8:1946]:8443/x", allow_private=False)


# --------------------------------------------------------------------------- CRUD


def test_create_list_get_delete(make_service: Callable[..., WebhookService]) -> None:
    svc = make_service()
    a = svc.create("http://127.0.0.1:9/a", ["job.succeeded", "job.failed", "job.succeeded"])
    b = svc.create("http://127.0.0.1:9/b", ["job.failed"])
    assert a.id.startswith("wh_")
    assert a.secret.startswith("whsec_")
    assert a.events == ("job.succeeded", "job.failed")
    assert [h.id for h in svc.registered()] == [a.id, b.id]
    assert svc.get(b.id) == b
    svc.delete(a.id)
    assert [h.id for h in svc.registered()] == [b.id]
    with pytest.raises(NotFound):
        svc.get(a.id)
    with pytest.raises(NotFound):
        svc.delete(a.id)
    with pytest.raises(NotFound):
        svc.deliveries("wh_unknown")


@pytest.mark.parametrize("events", [[], ["job.started"], ["job.failed", "nope"]])
def test_create_refuses_bad_events(
    make_service: Callable[..., WebhookService], events: list[str]
) -> None:
    svc = make_service()
    with pytest.raises(BadRequest) as info:
        svc.create("http://127.0.0.1:9/", events)
    assert info.value.http_status == 422
    assert info.value.code == "invalid_event"


def test_publish_only_to_subscribers_and_delete_drops_pending(
    make_service: Callable[..., WebhookService],
) -> None:
    svc = make_service()  # not started: nothing is sent
    ok_hook = svc.create("http://127.0.0.1:9/ok", ["job.succeeded"])
    both = svc.create("http://127.0.0.1:9/both", list(EVENTS))
    ids = svc.publish("job.failed", {"job_id": "j1"})
    assert len(ids) == 1
    assert svc.deliveries(ok_hook.id) == []
    pending = _only_delivery(svc, both.id)
    assert pending.id == ids[0]
    assert pending.id.startswith("msg_")
    assert pending.status == "pending"
    assert pending.attempts == ()
    assert pending.payload["type"] == "job.failed"
    assert pending.payload["data"] == {"job_id": "j1"}
    assert pending.payload["timestamp"].endswith("Z")
    assert not svc.wait_idle(0.05)
    svc.delete(both.id)
    assert svc.wait_idle(0.5)
    with sqlite3.connect(svc.store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM webhook_deliveries").fetchone()[0] == 0
    with pytest.raises(BadRequest):
        svc.publish("job.exploded", {})


# --------------------------------------------------------------------------- delivery


def test_delivery_is_signed_and_well_formed(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    calls: list[tuple[str, bool]] = []
    svc = make_service(on_attempt=lambda event, ok: calls.append((event, ok)))
    hook = svc.create(receiver.url, ["job.succeeded"])
    svc.start()
    [msg_id] = svc.publish("job.succeeded", {"job_id": "abc", "url": "/v1/jobs/abc/result"})
    assert svc.wait_idle(5)
    assert len(receiver.requests) == 1
    req = receiver.requests[0]
    assert req.path == "/hook/"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == f"mlsharp/{__version__}"
    assert req.headers["webhook-id"] == msg_id
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 60
    assert verify(hook.secret, req.headers, req.body)
    assert not verify(new_secret(), req.headers, req.body)
    assert b" " not in req.body  # compact JSON
    payload = json.loads(req.body)
    assert payload["type"] == "job.succeeded"
    assert payload["data"] == {"job_id": "abc", "url": "/v1/jobs/abc/result"}
    delivery = _only_delivery(svc, hook.id)
    assert delivery.status == "succeeded"
    assert delivery.payload == payload
    assert delivery.next_attempt_at is None
    assert [(a.number, a.status_code, a.error) for a in delivery.attempts] == [(1, 204, None)]
    assert calls == [("job.succeeded", True)]


def test_retry_after_500_keeps_message_id(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    receiver.respond = lambda n: 500 if n == 1 else 204
    svc = make_service(backoff_seconds=0.05)
    hook = svc.create(receiver.url, ["job.failed"])
    svc.start()
    svc.publish("job.failed", {"job_id": "j", "error": "boom"})
    assert svc.wait_idle(5)
    delivery = _only_delivery(svc, hook.id)
    assert delivery.status == "succeeded"
    assert [a.status_code for a in delivery.attempts] == [500, 204]
    assert delivery.attempts[1].at >= delivery.attempts[0].at + 0.04
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {delivery.id}
    for req in receiver.requests:
        assert verify(hook.secret, req.headers, req.body)


def test_gives_up_after_max_attempts(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    receiver.respond = lambda n: 500
    calls: list[bool] = []
    svc = make_service(
        max_attempts=3, backoff_seconds=0.01, on_attempt=lambda e, ok: calls.append(ok)
    )
    hook = svc.create(receiver.url, ["job.failed"])
    svc.start()
    svc.publish("job.failed", {})
    assert svc.wait_idle(5)
    delivery = _only_delivery(svc, hook.id)
    assert delivery.status == "failed"
    assert [a.number for a in delivery.attempts] == [1, 2, 3]
    assert all(a.status_code == 500 for a in delivery.attempts)
    assert len(receiver.requests) == 3
    assert calls == [False, False, False]


def test_410_gone_stops_at_once(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    receiver.respond = lambda n: 410
    svc = make_service()
    hook = svc.create(receiver.url, ["job.succeeded"])
    svc.start()
    svc.publish("job.succeeded", {})
    assert svc.wait_idle(5)
    delivery = _only_delivery(svc, hook.id)
    assert delivery.status == "failed"
    assert [a.status_code for a in delivery.attempts] == [410]


def test_redirect_is_a_failure_and_not_followed(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    receiver.respond = lambda n: 302
    svc = make_service(max_attempts=2, backoff_seconds=0.01)
    hook = svc.create(receiver.url, ["job.succeeded"])
    svc.start()
    svc.publish("job.succeeded", {})
    assert svc.wait_idle(5)
    delivery = _only_delivery(svc, hook.id)
    assert delivery.status == "failed"
    assert [a.status_code for a in delivery.attempts] == [302, 302]
    assert all(r.path == "/hook/" for r in receiver.requests)
    assert len(receiver.requests) == 2


def test_connection_error_is_recorded_and_thread_survives(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    # Grab a free port, then close it: nothing listens there.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    dead_port = probe.server_address[1]
    probe.server_close()
    svc = make_service(max_attempts=2, backoff_seconds=0.01)
    dead = svc.create(f"http://127.0.0.1:{dead_port}/", ["job.failed"])
    live = svc.create(receiver.url, ["job.failed"])
    svc.start()
    svc.publish("job.failed", {"n": 1})
    assert svc.wait_idle(5)
    failed = _only_delivery(svc, dead.id)
    assert failed.status == "failed"
    assert len(failed.attempts) == 2
    for attempt in failed.attempts:
        assert attempt.status_code is None
        assert attempt.error
        assert "Traceback" not in attempt.error
        assert "\n" not in attempt.error
    assert _only_delivery(svc, live.id).status == "succeeded"


def test_delivery_time_refusal_is_final(make_service: Callable[..., WebhookService]) -> None:
    # Registered while private addresses were allowed, delivered by a strict service.
    make_service(allow_private=True).create("http://127.0.0.1:9/", ["job.failed"])
    strict = make_service(allow_private=False, max_attempts=5)
    strict.publish("job.failed", {})
    strict.start()
    assert strict.wait_idle(5)
    [hook] = strict.registered()
    delivery = _only_delivery(strict, hook.id)
    assert delivery.status == "failed"
    assert len(delivery.attempts) == 1
    assert delivery.attempts[0].status_code is None
    assert "webhook URL refused" in (delivery.attempts[0].error or "")


def test_pending_deliveries_survive_restart(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    first = make_service()
    hook = first.create(receiver.url, ["job.succeeded"])
    [msg_id] = first.publish("job.succeeded", {"job_id": "persisted"})
    first.close()
    assert receiver.requests == []

    second = make_service()
    second.start()
    assert second.wait_idle(5)
    assert receiver.wait_for(1)
    assert receiver.requests[0].headers["webhook-id"] == msg_id
    assert json.loads(receiver.requests[0].body)["data"] == {"job_id": "persisted"}
    assert verify(hook.secret, receiver.requests[0].headers, receiver.requests[0].body)
    assert _only_delivery(second, hook.id).status == "succeeded"


def test_foreign_tables_are_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
        conn.execute("INSERT INTO jobs VALUES ('j1')")
    SQLiteWebhookStore(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [("j1",)]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        ours = {"webhook_endpoints", "webhook_deliveries", "webhook_attempts", "outbox"}
        assert names - {"jobs"} <= ours
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_timeout_is_a_failed_attempt_then_retried(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    def slow_then_fast(n: int) -> int:
        if n == 1:
            time.sleep(0.5)
        return 200

    receiver.respond = slow_then_fast
    svc = make_service(timeout_seconds=0.1, backoff_seconds=0.01)
    hook = svc.create(receiver.url, ["job.succeeded"])
    svc.start()
    svc.publish("job.succeeded", {})
    assert svc.wait_idle(5)
    delivery = _only_delivery(svc, hook.id)
    assert delivery.status == "succeeded"
    first, second = delivery.attempts
    assert first.status_code is None
    assert "Timeout" in (first.error or "")
    assert second.status_code == 200


def test_failing_metrics_hook_does_not_stop_delivery(
    make_service: Callable[..., WebhookService], receiver: Receiver
) -> None:
    def broken(event: str, ok: bool) -> None:
        raise RuntimeError("metrics down")

    svc = make_service(on_attempt=broken)
    hook = svc.create(receiver.url, ["job.succeeded"])
    svc.start()
    svc.publish("job.succeeded", {"n": 1})
    svc.publish("job.succeeded", {"n": 2})
    assert svc.wait_idle(5)
    assert [d.status for d in svc.deliveries(hook.id)] == ["succeeded", "succeeded"]
    assert [d.payload["data"]["n"] for d in svc.deliveries(hook.id)] == [2, 1]
    assert [json.loads(r.body)["data"]["n"] for r in receiver.requests] == [1, 2]
