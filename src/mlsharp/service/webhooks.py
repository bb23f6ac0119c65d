"""Webhooks: tell a client's server when a job ends, the Standard Webhooks way.

Design
------
* **Signing** follows the Standard Webhooks spec (https://www.standardwebhooks.com): every
  request carries ``webhook-id`` (the message id, the same on every retry so a receiver can
  de-duplicate), ``webhook-timestamp`` (unix seconds, fresh per attempt) and
  ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``, keyed
  with the base64-decoded part of the ``whsec_`` secret). :func:`sign` and :func:`verify` are
  the two halves; receivers written in Python can use :func:`verify` as is.
* **Persistence**: endpoints, deliveries and their attempts live in SQLite tables prefixed
  ``webhook_`` (the file may be shared with other subsystems' tables). WAL mode, one connection
  shared under a lock, and every state change is committed at once, so a restart loses nothing:
  :meth:`WebhookService.start` simply resumes whatever is still ``pending``.
* **Publishing is cheap**: :meth:`WebhookService.publish` (called from a job worker thread)
  only inserts rows and wakes the dispatcher; it never touches the network.
* **Dispatch**: one daemon thread takes the pending delivery with the earliest due time, makes
  one attempt, records it, and otherwise sleeps on a :class:`threading.Event` until the next
  due time or a publish. Deliveries therefore go out one at a time, in due order. Failures
  (non-2xx including redirects, which are never followed, timeouts, connection errors) are
  retried with exponential backoff ``backoff_seconds * 2**(attempts-1)`` capped at an hour, up
  to ``max_attempts``; ``410 Gone`` stops at once. Nothing a receiver does can kill the thread.
* **SSRF protection**: :func:`check_url` refuses non-http(s) URLs, URLs with credentials and,
  unless ``allow_private``, any host that resolves to a non-public address (loopback, private,
  link-local, multicast, reserved, unspecified; IPv4-mapped / 6to4 / NAT64 IPv6 are unwrapped).
  It runs when a webhook is created and again before every attempt, because DNS can change.
  (A resolver that answers differently between the check and the connection, "DNS
  rebinding", is not covered; redirects are, since they are never followed.)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from mlsharp._version import __version__
from mlsharp.errors import BadRequest, NotFound

__all__ = [
    "EVENTS",
    "Attempt",
    "Delivery",
    "Webhook",
    "WebhookService",
    "check_url",
    "new_secret",
    "sign",
    "verify",
]

log = logging.getLogger("mlsharp.webhooks")

#: The events a webhook can subscribe to.
EVENTS: tuple[str, ...] = ("job.succeeded", "job.failed")

_SECRET_PREFIX = "whsec_"
_MAX_BACKOFF_S = 3600.0
_MAX_URL_LEN = 2048
_MAX_ERROR_LEN = 200
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Webhook:
    """A registered endpoint: where to POST, which events, and the signing secret."""

    id: str
    url: str
    events: tuple[str, ...]
    secret: str
    created_at: float
    #: The API-key identity that registered it (``None`` on an open service). A webhook
    #: only sees events of its owner's jobs, and only its owner can see or delete it.
    owner: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One try at delivering a message: the HTTP status received, or a short error."""

    number: int
    at: float
    status_code: int | None
    error: str | None
    duration_ms: float


@dataclass(frozen=True)
class Delivery:
    """One message for one webhook, with its attempts so far.

    ``id`` is the message id sent as ``webhook-id``; it stays the same across retries.
    ``status`` is ``"pending"``, ``"succeeded"`` or ``"failed"``; ``next_attempt_at`` is set
    only while pending.
    """

    id: str
    webhook_id: str
    event: str
    status: str
    attempts: tuple[Attempt, ...]
    next_attempt_at: float | None
    created_at: float
    payload: dict


# --------------------------------------------------------------------------- signing


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + standard base64 of 24 random bytes."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    raw = secret.removeprefix(_SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not valid base64 after the 'whsec_' prefix") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature ``v1,<base64 HMAC-SHA256>`` of one message.

    The key is the base64-decoded secret (without ``whsec_``); the signed content is
    ``f"{msg_id}.{timestamp}.".encode() + body``. Raises ``ValueError`` for a malformed secret.
    """
    content = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(_secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> bool:
    """Whether ``body`` with ``headers`` is a genuine, fresh message signed with ``secret``.

    Header names are matched case-insensitively. ``webhook-signature`` may hold several
    space-separated signatures (during secret rotation); any matching ``v1`` one is enough.
    The timestamp must be within ``tolerance_s`` of ``now`` (default: the current time).
    Missing or malformed headers give ``False``; a malformed *secret* raises ``ValueError``.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    ts_text = lowered.get("webhook-timestamp")
    sig_header = lowered.get("webhook-signature")
    if not msg_id or not ts_text or not sig_header:
        return False
    try:
        timestamp = int(ts_text.strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    matched = False
    for candidate in sig_header.split():
        if not candidate.startswith("v1,"):
            continue
        # Compare every candidate (no early exit) in constant time.
        if hmac.compare_digest(expected, candidate.encode("utf-8", "replace")):
            matched = True
    return matched


# --------------------------------------------------------------------------- SSRF guard


def _refuse(message: str) -> BadRequest:
    return BadRequest(f"webhook URL refused: {message}", status=422, code="webhook_url_refused")


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Any]:
    """The address itself plus any IPv4 address an IPv6 address wraps."""
    found: list[Any] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            found.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
        if ip in _NAT64:
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (
        not ip.is_global
        or ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a webhook URL that is malformed or (unless ``allow_private``) not public.

    Raises ``BadRequest(status=422, code="webhook_url_refused")`` when the scheme is not
    http/https, there is no host, the URL carries credentials, or — unless ``allow_private``
    — the host does not resolve or any address it resolves to (``socket.getaddrinfo``; literal
    IPv4/IPv6 too, IPv4-mapped IPv6 unwrapped) is loopback, private, link-local, multicast,
    reserved or unspecified. With ``allow_private`` no name resolution is done.
    """
    if not isinstance(url, str) or not url:
        raise _refuse("the URL is empty")
    if len(url) > _MAX_URL_LEN:
        raise _refuse(f"the URL is longer than {_MAX_URL_LEN} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _refuse("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse(f"the URL cannot be parsed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(f"scheme {scheme or '(none)'!r} is not http or https")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise _refuse("the URL must not contain a user name or password")
    host = parts.hostname
    if not host:
        raise _refuse("the URL has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(
            host, port or (443 if scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        raise _refuse(f"host {host!r} cannot be resolved") from None
    if not infos:
        raise _refuse(f"host {host!r} cannot be resolved")
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise _refuse(f"host {host!r} resolves to an unusable address") from None
        for candidate in _embedded_ipv4(ip):
            if not _is_public(candidate):
                raise _refuse(
                    f"host {host!r} resolves to {ip}, which is not a public address"
                    " (loopback, private, link-local, multicast or reserved)"
                )


# --------------------------------------------------------------------------- service

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    next_attempt_at REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_webhook
    ON webhook_deliveries (webhook_id, created_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms REAL NOT NULL,
    PRIMARY KEY (delivery_id, number)
);
"""


def _iso_utc(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message[:_MAX_ERROR_LEN]


def attempt_outcome(
    status_code: int | None,
    number: int,
    *,
    give_up: bool,
    max_attempts: int,
    backoff_seconds: float,
) -> tuple[bool, str, float | None]:
    """What delivery attempt ``number`` (1-based) leads to: ``(ok, status, next_at)``.

    A 2xx succeeds. A refused URL (``give_up``), a 410 Gone or the last allowed attempt
    fails for good. Anything else (no response, another status) is retried after an
    exponential backoff, capped, at the epoch time ``next_at``. Shared by every backend.
    """
    ok = status_code is not None and 200 <= status_code < 300
    if ok:
        return True, "succeeded", None
    if give_up or status_code == 410 or number >= max_attempts:
        return False, "failed", None
    backoff = min(backoff_seconds * 2 ** (number - 1), _MAX_BACKOFF_S)
    return False, "pending", time.time() + backoff


def new_webhook(
    url: str, events: Sequence[str] | str, owner: str | None, *, allow_private: bool
) -> Webhook:
    """A new endpoint for ``url`` and ``events`` (validated, de-duplicated), with a new secret.

    Shared by every webhook backend. Raises ``BadRequest(422, "invalid_event")`` for no or
    unknown events and ``BadRequest(422, "webhook_url_refused")`` for a URL
    :func:`check_url` refuses.
    """
    if isinstance(events, str):
        events = [events]
    wanted = tuple(dict.fromkeys(events))
    if not wanted:
        raise BadRequest(
            f"at least one event is required (one of: {', '.join(EVENTS)})",
            status=422,
            code="invalid_event",
        )
    unknown = [e for e in wanted if e not in EVENTS]
    if unknown:
        raise BadRequest(
            f"unknown event {unknown[0]!r} (known: {', '.join(EVENTS)})",
            status=422,
            code="invalid_event",
        )
    check_url(url, allow_private=allow_private)
    return Webhook(
        id="wh_" + secrets.token_urlsafe(16),
        url=url,
        events=wanted,
        secret=new_secret(),
        created_at=time.time(),
        owner=owner,
    )


class WebhookService:
    """Registered webhooks plus a background dispatcher that delivers, signs and retries.

    ``publish`` only persists; ``start`` runs the delivery thread (resuming anything pending
    from before a restart); ``stop`` ends it. ``transport`` lets tests or the app plug in an
    ``httpx`` transport; ``on_attempt(event, ok)`` is called after each attempt (metrics).
    """

    def __init__(
        self,
        db_path: Path,
        *,
        allow_private: bool = False,
        max_attempts: int = 6,
        backoff_seconds: float = 2.0,
        timeout_seconds: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        on_attempt: Callable[[str, bool], None] | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_seconds < 0 or timeout_seconds <= 0:
            raise ValueError("backoff_seconds must be >= 0 and timeout_seconds > 0")
        self.db_path = Path(db_path)
        self.allow_private = allow_private
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._transport = transport
        self._on_attempt = on_attempt
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(self.db_path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    # ----------------------------------------------------------------- db helpers

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one committed transaction, under the lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @staticmethod
    def _webhook(row: sqlite3.Row) -> Webhook:
        return Webhook(
            id=row["id"],
            url=row["url"],
            events=tuple(json.loads(row["events"])),
            secret=row["secret"],
            created_at=row["created_at"],
            owner=row["owner"],
        )

    def _notify_changed(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # ----------------------------------------------------------------- endpoints

    def create(self, url: str, events: Sequence[str], owner: str | None = None) -> Webhook:
        """Register ``url`` for ``events`` (validated, de-duplicated) with a new secret.

        Raises ``BadRequest(422, "invalid_event")`` for no or unknown events and
        ``BadRequest(422, "webhook_url_refused")`` for a URL :func:`check_url` refuses.
        """
        webhook = new_webhook(url, events, owner, allow_private=self.allow_private)
        wanted = webhook.events
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO webhook_endpoints (id, url, events, secret, created_at, owner)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    webhook.id,
                    webhook.url,
                    json.dumps(list(wanted)),
                    webhook.secret,
                    webhook.created_at,
                    owner,
                ),
            )
        return webhook

    def list(self, owner: str | None = None) -> list[Webhook]:
        """The webhooks registered by ``owner``, oldest first."""
        rows = self._query(
            "SELECT * FROM webhook_endpoints WHERE coalesce(owner, '') = ?"
            " ORDER BY created_at, rowid",
            (owner or "",),
        )
        return [self._webhook(r) for r in rows]

    def get(self, webhook_id: str, owner: str | None = None) -> Webhook:
        """The webhook ``webhook_id`` of ``owner``; ``NotFound`` if there is none."""
        rows = self._query(
            "SELECT * FROM webhook_endpoints WHERE id = ? AND coalesce(owner, '') = ?",
            (webhook_id, owner or ""),
        )
        if not rows:
            raise NotFound(f"no webhook {webhook_id!r}")
        return self._webhook(rows[0])

    def delete(self, webhook_id: str, owner: str | None = None) -> None:
        """Remove a webhook and its deliveries (pending ones are dropped); ``NotFound`` if none."""
        self.get(webhook_id, owner)
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (webhook_id,))
            if cur.rowcount == 0:
                raise NotFound(f"no webhook {webhook_id!r}")
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN"
                " (SELECT id FROM webhook_deliveries WHERE webhook_id = ?)",
                (webhook_id,),
            )
            conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
        self._wake.set()
        self._notify_changed()

    # ----------------------------------------------------------------- deliveries

    def publish(self, event: str, data: dict, owner: str | None = None) -> list[str]:
        """Queue ``event`` for every webhook of ``owner`` subscribed to it; returns ids.

        The body is ``{"type": event, "timestamp": <ISO-8601 UTC>, "data": data}``. Only
        database rows are written and the dispatcher is woken: no network I/O here.
        Raises ``BadRequest(422, "invalid_event")`` for an unknown event and ``TypeError`` if
        ``data`` is not JSON-serialisable.
        """
        if event not in EVENTS:
            raise BadRequest(
                f"unknown event {event!r} (known: {', '.join(EVENTS)})",
                status=422,
                code="invalid_event",
            )
        now = time.time()
        payload = {"type": event, "timestamp": _iso_utc(now), "data": data}
        body = json.dumps(payload, separators=(",", ":"))
        ids: list[str] = []
        with self._tx() as conn:
            hooks = conn.execute(
                "SELECT id, events FROM webhook_endpoints WHERE coalesce(owner, '') = ?",
                (owner or "",),
            ).fetchall()
            for row in hooks:
                if event not in json.loads(row["events"]):
                    continue
                delivery_id = "msg_" + secrets.token_urlsafe(16)
                conn.execute(
                    "INSERT INTO webhook_deliveries"
                    " (id, webhook_id, event, status, body, next_attempt_at, created_at)"
                    " VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                    (delivery_id, row["id"], event, body, now, now),
                )
                ids.append(delivery_id)
        if ids:
            self._wake.set()
            self._notify_changed()
        return ids

    def deliveries(
        self, webhook_id: str, limit: int = 100, owner: str | None = None
    ) -> list[Delivery]:
        """The latest ``limit`` deliveries of a webhook, newest first; ``NotFound`` if unknown."""
        self.get(webhook_id, owner)
        limit = max(0, int(limit))
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM webhook_deliveries WHERE webhook_id = ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (webhook_id, limit),
            ).fetchall()
            attempts: dict[str, list[Attempt]] = {r["id"]: [] for r in rows}
            if rows:
                marks = ",".join("?" * len(rows))
                for a in self._conn.execute(
                    f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({marks})"
                    " ORDER BY delivery_id, number",
                    [r["id"] for r in rows],
                ):
                    attempts[a["delivery_id"]].append(
                        Attempt(
                            number=a["number"],
                            at=a["at"],
                            status_code=a["status_code"],
                            error=a["error"],
                            duration_ms=a["duration_ms"],
                        )
                    )
        return [
            Delivery(
                id=r["id"],
                webhook_id=r["webhook_id"],
                event=r["event"],
                status=r["status"],
                attempts=tuple(attempts[r["id"]]),
                next_attempt_at=r["next_attempt_at"] if r["status"] == "pending" else None,
                created_at=r["created_at"],
                payload=json.loads(r["body"]),
            )
            for r in rows
        ]

    def _pending_count(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
        return int(rows[0][0])

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the delivery thread (a daemon); pending deliveries from before resume."""
        if self._thread is not None and self._thread.is_alive():
            self._stopping.clear()  # a stop() that timed out is cancelled
            return
        self._stopping.clear()
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="mlsharp-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the delivery thread, waiting up to ``timeout`` seconds for the current attempt.

        Whatever is still pending stays persisted and is resumed by the next :meth:`start`.
        """
        thread = self._thread
        self._stopping.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
            if not thread.is_alive():
                self._thread = None

    def close(self) -> None:
        """Stop the thread and close the database connection."""
        self.stop()
        with self._lock:
            self._conn.close()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no delivery is pending (``True``) or ``timeout`` seconds pass (``False``)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._pending_count() == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                # Woken after every recorded attempt; the short cap also covers missed wakes.
                self._changed.wait(min(remaining, 0.05))

    # ----------------------------------------------------------------- dispatcher

    def _run(self) -> None:
        with httpx.Client(
            transport=self._transport,
            timeout=self.timeout_seconds,
            follow_redirects=False,
        ) as client:
            while not self._stopping.is_set():
                # Clear before looking, so a publish after the query still wakes the wait.
                self._wake.clear()
                try:
                    row = self._next_due()
                    if row is None:
                        self._wake.wait()
                        continue
                    delay = row["next_attempt_at"] - time.time()
                    if delay > 0:
                        self._wake.wait(delay)
                        continue
                    self._attempt(client, row)
                except Exception:
                    # The one broad catch: a bug or a database hiccup must not kill delivery.
                    log.exception("webhook dispatcher error; continuing")
                    self._stopping.wait(0.5)

    def _next_due(self) -> sqlite3.Row | None:
        rows = self._query(
            "SELECT d.*, e.url, e.secret FROM webhook_deliveries d"
            " JOIN webhook_endpoints e ON e.id = d.webhook_id"
            " WHERE d.status = 'pending'"
            " ORDER BY d.next_attempt_at, d.created_at, d.rowid LIMIT 1"
        )
        return rows[0] if rows else None

    def _attempt(self, client: httpx.Client, row: sqlite3.Row) -> None:
        delivery_id: str = row["id"]
        number = 1 + int(
            self._query(
                "SELECT COUNT(*) FROM webhook_attempts WHERE delivery_id = ?", (delivery_id,)
            )[0][0]
        )
        started = time.time()
        t0 = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        final = False  # no retry whatever the count
        refused = False
        if not self.allow_private:
            try:
                check_url(row["url"], allow_private=False)
            except BadRequest as exc:
                error, final, refused = str(exc)[:_MAX_ERROR_LEN], True, True
        if not refused:
            body = row["body"].encode("utf-8")
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": f"mlsharp/{__version__}",
                "webhook-id": delivery_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(row["secret"], delivery_id, timestamp, body),
            }
            try:
                # Stream so the receiver's response body is never read into memory.
                with client.stream("POST", row["url"], content=body, headers=headers) as resp:
                    status_code = resp.status_code
            except (httpx.HTTPError, OSError) as exc:
                error = _short_error(exc)
        duration_ms = (time.monotonic() - t0) * 1000.0
        ok, status, next_at = attempt_outcome(
            status_code,
            number,
            give_up=final,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )
        if status_code is not None and not ok:
            log.info("webhook %s attempt %d: HTTP %d", delivery_id, number, status_code)
        elif error is not None:
            log.info("webhook %s attempt %d: %s", delivery_id, number, error)
        # Before recording, so wait_idle() returning implies the callback has run.
        if self._on_attempt is not None:
            try:
                self._on_attempt(row["event"], ok)
            except Exception:
                # A faulty metrics hook must not stop deliveries.
                log.exception("webhook on_attempt callback failed")
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE webhook_deliveries SET status = ?, next_attempt_at = ?"
                " WHERE id = ? AND status = 'pending'",
                (status, next_at, delivery_id),
            )
            if cur.rowcount:  # 0 when the webhook was deleted meanwhile
                conn.execute(
                    "INSERT OR REPLACE INTO webhook_attempts"
                    " (delivery_id, number, at, status_code, error, duration_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (delivery_id, number, started, status_code, error, duration_ms),
                )
        self._notify_changed()
