"""``RedisWebhookService``: webhooks shared by every API instance, each event sent once.

The same interface and wire format as the embedded
:class:`~mlsharp.service.webhooks.WebhookService` (Standard Webhooks signing, SSRF check
before every attempt, exponential backoff, ``410 Gone`` stops), with the registry and
deliveries in Redis::

    ns:wh:hook:<id>             a webhook as JSON
    ns:wh:owner:<owner>         its owner's webhook ids by creation time
    ns:wh:delivery:<id>         a delivery as JSON (status, body, next attempt)
    ns:wh:attempts:<id>         list of its attempts as JSON
    ns:wh:by_hook:<hook id>     the webhook's delivery ids by creation time
    ns:wh:due                   pending delivery ids by due time
    ns:wh:dedupe:<key>          set once per (job, event): no second delivery for it

**Exactly one send per attempt across instances.** Every API instance runs a dispatcher
thread; a dispatcher takes a due delivery with one atomic script that also pushes its due
time past the attempt's timeout (a lease), so no other instance sends it meanwhile; if
the instance dies mid-attempt the delivery becomes due again (same ``webhook-id``, which
receivers use to de-duplicate).

**One delivery per job event.** Workers create deliveries with :meth:`stage` inside the
job's final transaction (see ``job_store.RedisJobStore.finish``), guarded by a dedupe key,
so a job completed twice (a redelivered message) still produces one delivery.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from mlsharp._version import __version__
from mlsharp.errors import BadRequest, NotFound
from mlsharp.service.distributed.redis_conn import connection_errors, guarded
from mlsharp.service.webhooks import (
    EVENTS,
    Attempt,
    Delivery,
    Webhook,
    _iso_utc,
    attempt_outcome,
    check_url,
    new_webhook,
    sign,
)

log = logging.getLogger("mlsharp.webhooks")

_DEDUPE_TTL_S = 30 * 86400
_POLL_S = 0.25

# Take the earliest due delivery and push its due time to ARGV[2] (the attempt's lease).
_CLAIM = """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('zadd', KEYS[1], ARGV[2], due[1])
return due[1]
"""


class RedisWebhookService:
    """Webhooks in Redis plus a dispatcher thread per API instance (module docstring)."""

    def __init__(
        self,
        client: Any,
        namespace: str,
        *,
        allow_private: bool = False,
        max_attempts: int = 6,
        backoff_seconds: float = 2.0,
        timeout_seconds: float = 10.0,
        on_attempt: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.client = client
        self.ns = f"{namespace}:wh"
        self.allow_private = allow_private
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._on_attempt = on_attempt
        self._claim = client.register_script(_CLAIM)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- registry ------------------------------------------------------------------------

    @staticmethod
    def _hook(raw: bytes) -> Webhook:
        data = json.loads(raw)
        data["events"] = tuple(data["events"])
        return Webhook(**data)

    @guarded
    def create(self, url: str, events: Sequence[str], owner: str | None = None) -> Webhook:
        """Register ``url`` for ``events``; the same checks as the embedded service."""
        hook = new_webhook(url, events, owner, allow_private=self.allow_private)
        data = {**hook.__dict__, "events": list(hook.events)}
        pipe = self.client.pipeline(transaction=True)
        pipe.set(f"{self.ns}:hook:{hook.id}", json.dumps(data))
        pipe.zadd(f"{self.ns}:owner:{owner or ''}", {hook.id: hook.created_at})
        pipe.execute()
        return hook

    @guarded
    def list(self, owner: str | None = None) -> list[Webhook]:
        """The webhooks registered by ``owner``, oldest first."""
        ids = self.client.zrange(f"{self.ns}:owner:{owner or ''}", 0, -1)
        if not ids:
            return []
        raws = self.client.mget([f"{self.ns}:hook:{i.decode()}" for i in ids])
        return [self._hook(raw) for raw in raws if raw is not None]

    @guarded
    def get(self, webhook_id: str, owner: str | None = None) -> Webhook:
        """The webhook ``webhook_id`` of ``owner``; ``NotFound`` if there is none."""
        raw = self.client.get(f"{self.ns}:hook:{webhook_id}")
        hook = None if raw is None else self._hook(raw)
        if hook is None or (hook.owner or "") != (owner or ""):
            raise NotFound(f"no webhook {webhook_id!r}")
        return hook

    @guarded
    def delete(self, webhook_id: str, owner: str | None = None) -> None:
        """Remove a webhook and its deliveries (pending ones are dropped)."""
        self.get(webhook_id, owner)
        ids = [i.decode() for i in self.client.zrange(f"{self.ns}:by_hook:{webhook_id}", 0, -1)]
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(f"{self.ns}:hook:{webhook_id}", f"{self.ns}:by_hook:{webhook_id}")
        pipe.zrem(f"{self.ns}:owner:{owner or ''}", webhook_id)
        for delivery_id in ids:
            pipe.delete(f"{self.ns}:delivery:{delivery_id}", f"{self.ns}:attempts:{delivery_id}")
            pipe.zrem(f"{self.ns}:due", delivery_id)
        pipe.execute()

    # -- publishing ----------------------------------------------------------------------

    def stage(
        self,
        pipe: Any,
        event: str,
        data: dict,
        owner: str | None = None,
        dedupe_key: str | None = None,
    ) -> int:
        """Queue the deliveries of ``event`` on a MULTI pipeline; returns how many.

        The subscriber list is read now (outside the transaction); the writes commit with
        whatever else the caller's transaction holds. With ``dedupe_key`` the deliveries
        are only created if that key was never used (a Lua-free ``SET NX`` cannot guard
        other commands in a MULTI, so the key is checked here and written in the MULTI;
        the caller's WATCH on the job record makes the pair atomic).
        """
        if event not in EVENTS:
            raise BadRequest(f"unknown event {event!r}", status=422, code="invalid_event")
        if dedupe_key is not None:
            if self.client.exists(f"{self.ns}:dedupe:{dedupe_key}"):
                return 0
            pipe.set(f"{self.ns}:dedupe:{dedupe_key}", "1", ex=_DEDUPE_TTL_S)
        now = time.time()
        body = json.dumps(
            {"type": event, "timestamp": _iso_utc(now), "data": data}, separators=(",", ":")
        )
        count = 0
        for hook in self.list(owner):
            if event not in hook.events:
                continue
            delivery_id = "msg_" + secrets.token_urlsafe(16)
            record = {
                "id": delivery_id,
                "webhook_id": hook.id,
                "event": event,
                "status": "pending",
                "body": body,
                "next_attempt_at": now,
                "created_at": now,
            }
            pipe.set(f"{self.ns}:delivery:{delivery_id}", json.dumps(record))
            pipe.zadd(f"{self.ns}:by_hook:{hook.id}", {delivery_id: now})
            pipe.zadd(f"{self.ns}:due", {delivery_id: now})
            count += 1
        return count

    @guarded
    def publish(
        self, event: str, data: dict, owner: str | None = None, dedupe_key: str | None = None
    ) -> int:
        """Create the deliveries of ``event`` now (API-side events such as cache hits)."""
        pipe = self.client.pipeline(transaction=True)
        count = self.stage(pipe, event, data, owner, dedupe_key)
        pipe.execute()
        if count:
            self._wake.set()
        return count

    @guarded
    def deliveries(
        self, webhook_id: str, limit: int = 100, owner: str | None = None
    ) -> list[Delivery]:
        """The latest ``limit`` deliveries of a webhook, newest first."""
        self.get(webhook_id, owner)
        ids = [
            i.decode()
            for i in self.client.zrevrange(f"{self.ns}:by_hook:{webhook_id}", 0, max(0, limit) - 1)
        ]
        found = []
        for delivery_id in ids:
            raw = self.client.get(f"{self.ns}:delivery:{delivery_id}")
            if raw is None:
                continue
            record = json.loads(raw)
            attempts = tuple(
                Attempt(**json.loads(a))
                for a in self.client.lrange(f"{self.ns}:attempts:{delivery_id}", 0, -1)
            )
            found.append(
                Delivery(
                    id=record["id"],
                    webhook_id=record["webhook_id"],
                    event=record["event"],
                    status=record["status"],
                    attempts=attempts,
                    next_attempt_at=record["next_attempt_at"]
                    if record["status"] == "pending"
                    else None,
                    created_at=record["created_at"],
                    payload=json.loads(record["body"]),
                )
            )
        return found

    def pending_count(self) -> int:
        """Deliveries waiting to be sent (over the whole cluster)."""
        return int(self.client.zcard(f"{self.ns}:due"))

    def wait_idle(self, timeout: float) -> bool:
        """Block until no delivery is pending (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while self.pending_count():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # -- dispatch ------------------------------------------------------------------------

    def start(self) -> None:
        """Start this instance's dispatcher thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="mlsharp-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the dispatcher; pending deliveries stay for the other instances."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the dispatcher (the Redis client belongs to the state)."""
        self.stop()

    def _run(self) -> None:
        errors = connection_errors()
        with httpx.Client(timeout=self.timeout_seconds, follow_redirects=False) as http:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    lease = time.time() + self.timeout_seconds + 30
                    claimed = self._claim(keys=[f"{self.ns}:due"], args=[time.time(), lease])
                    if claimed is None:
                        self._wake.wait(_POLL_S)
                        continue
                    self._attempt(http, claimed.decode())
                except errors as error:  # Redis away: wait, other instances may take over
                    log.warning("webhook dispatcher: redis unavailable (%s)", error)
                    self._stopping.wait(2.0)
                except Exception:  # a bug must not stop deliveries for good
                    log.exception("webhook dispatcher error; continuing")
                    self._stopping.wait(0.5)

    def _attempt(self, http: httpx.Client, delivery_id: str) -> None:
        raw = self.client.get(f"{self.ns}:delivery:{delivery_id}")
        if raw is None:  # deleted with its webhook
            self.client.zrem(f"{self.ns}:due", delivery_id)
            return
        record = json.loads(raw)
        hook_raw = self.client.get(f"{self.ns}:hook:{record['webhook_id']}")
        if hook_raw is None:
            self.client.zrem(f"{self.ns}:due", delivery_id)
            return
        hook = self._hook(hook_raw)
        number = 1 + int(self.client.llen(f"{self.ns}:attempts:{delivery_id}"))
        started, t0 = time.time(), time.monotonic()
        status_code: int | None = None
        error: str | None = None
        refused = False
        try:
            check_url(hook.url, allow_private=self.allow_private)
        except BadRequest as exc:
            error, refused = str(exc)[:200], True
        if not refused:
            body = record["body"].encode()
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": f"mlsharp/{__version__}",
                "webhook-id": delivery_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(hook.secret, delivery_id, timestamp, body),
            }
            try:
                with http.stream("POST", hook.url, content=body, headers=headers) as response:
                    status_code = response.status_code
            except (httpx.HTTPError, OSError) as exc:
                error = f"{type(exc).__name__}: {str(exc)[:150]}"
        ok, status, next_at = attempt_outcome(
            status_code,
            number,
            give_up=refused,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )
        if self._on_attempt is not None:
            try:
                self._on_attempt(record["event"], ok)
            except Exception:
                log.exception("webhook on_attempt callback failed")
        attempt = Attempt(number, started, status_code, error, (time.monotonic() - t0) * 1000)
        record.update(status=status, next_attempt_at=next_at)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(f"{self.ns}:delivery:{delivery_id}", json.dumps(record))
        pipe.rpush(f"{self.ns}:attempts:{delivery_id}", json.dumps(attempt.__dict__))
        if next_at is None:
            pipe.zrem(f"{self.ns}:due", delivery_id)
        else:
            pipe.zadd(f"{self.ns}:due", {delivery_id: next_at})
        pipe.execute()
