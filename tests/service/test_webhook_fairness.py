"""One tenant's slow webhooks cannot hold back another tenant's deliveries.

Regression test of issue 12 (defect 4): deliveries went out one at a time, and nothing
capped webhooks per key, so 8 slow endpoints of one key delayed another key's delivery by
31 s, without bound. Now a dispatcher runs several attempts at once, at most one per
endpoint and at most half of them for one key, and a key has a bounded number of
webhooks. The assertions are about order and concurrency (the other key is served while
the slow endpoints still hold their requests), not about elapsed time.

Runs over both webhook backends (SQLite and Redis).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlsharp.errors import BadRequest

CONCURRENCY = 4  # so one key may hold at most 2 attempts at once
PER_KEY = 4


@dataclass
class SlowReceiver:
    """Holds every request to ``/slow/...`` until :meth:`release`; answers ``/fast``."""

    url: str
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(default_factory=threading.Condition)
    held: dict[str, int] = field(default_factory=dict)
    most_held: int = 0
    most_held_per_path: int = 0
    done: list[str] = field(default_factory=list)

    def _slow_held(self) -> int:
        return sum(n for path, n in self.held.items() if path.startswith("/slow"))

    def holding(self) -> int:
        """Requests to the slow endpoints held right now."""
        with self.lock:
            return self._slow_held()

    def wait(self, condition: Callable[[], bool], timeout: float = 20) -> bool:
        with self.changed:
            return self.changed.wait_for(condition, timeout)

    def release(self) -> None:
        self.released.set()

    def _note(self, path: str, delta: int) -> None:
        with self.lock:
            self.held[path] = self.held.get(path, 0) + delta
            self.most_held = max(self.most_held, self._slow_held())
            self.most_held_per_path = max(self.most_held_per_path, self.held[path])
            if delta < 0:
                self.done.append(path)
        with self.changed:
            self.changed.notify_all()


@pytest.fixture()
def receiver() -> Iterator[SlowReceiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    rec = SlowReceiver(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            rec._note(self.path, +1)
            if self.path.startswith("/slow"):
                rec.released.wait(60)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            rec._note(self.path, -1)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield rec
    finally:
        rec.release()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(params=["sqlite", "redis"])
def webhooks(request, tmp_path: Path) -> Iterator[Any]:
    """A webhook service of each backend, delivering 4 attempts at once, 4 hooks a key."""
    options: dict[str, Any] = {
        "allow_private": True,
        "timeout_seconds": 30.0,  # longer than the test: a held request stays held
        "concurrency": CONCURRENCY,
        "max_per_owner": PER_KEY,
    }
    from mlsharp.service.webhooks import WebhookService

    if request.param == "sqlite":
        from mlsharp.service.webhooks.sqlite import SQLiteWebhookStore

        store: Any = SQLiteWebhookStore(tmp_path / "webhooks.sqlite3")
    else:
        from mlsharp.service.webhooks.redis import RedisWebhookStore

        store = RedisWebhookStore(request.getfixturevalue("redis_server").client(), "t")
    service = WebhookService(store, **options)
    yield service
    service.close()


def test_slow_endpoints_of_one_key_do_not_hold_back_another(webhooks, receiver) -> None:
    slow = [webhooks.create(f"{receiver.url}/slow/{i}", ["job.succeeded"], "a") for i in range(4)]
    webhooks.create(f"{receiver.url}/fast", ["job.succeeded"], "b")
    webhooks.start()
    for number in range(2):  # 8 deliveries to key a's 4 endpoints
        webhooks.publish("job.succeeded", {"n": number}, owner="a")
    # Key a gets at most half the attempts at once, each endpoint one at a time...
    assert receiver.wait(lambda: receiver.holding() == CONCURRENCY // 2)
    # ... so key b's delivery goes out while all of them are still held.
    webhooks.publish("job.succeeded", {"n": "b"}, owner="b")
    assert receiver.wait(lambda: "/fast" in receiver.done), "key b waited for key a"
    assert receiver.holding() == CONCURRENCY // 2
    receiver.release()
    assert webhooks.wait_idle(30)
    assert sorted(receiver.done) == sorted(["/fast"] + [f"/slow/{i}" for i in range(4)] * 2)
    assert receiver.most_held == CONCURRENCY // 2
    assert receiver.most_held_per_path == 1
    assert {d.status for h in slow for d in webhooks.deliveries(h.id, owner="a")} == {"succeeded"}


def test_webhooks_per_key_are_capped(webhooks) -> None:
    for i in range(PER_KEY):
        webhooks.create(f"http://127.0.0.1:9/{i}", ["job.failed"], "a")
    with pytest.raises(BadRequest) as refused:
        webhooks.create("http://127.0.0.1:9/more", ["job.failed"], "a")
    assert refused.value.http_status == 409 and refused.value.code == "too_many_webhooks"
    assert f"at most {PER_KEY} webhooks" in str(refused.value)
    webhooks.create("http://127.0.0.1:9/other", ["job.failed"], "b")  # another key: fine
    webhooks.delete(webhooks.registered("a")[0].id, "a")
    webhooks.create("http://127.0.0.1:9/again", ["job.failed"], "a")  # room again
