"""``WebhookService``: the webhook policy, written once over a :class:`WebhookStore`.

* **Registry**: endpoints are checked (events, SSRF guard) and capped per API key
  (``max_per_owner``, checked by the store in the transaction that adds one).
* **The outbox**: a job's end is written to the outbox by the job store, in the
  transaction that records it (:mod:`mlsharp.service.outbox`). The dispatcher relays each
  entry: one pending delivery per subscribed endpoint (the body's ``data`` rendered from
  the job's record by ``render``), the entry removed in the same transaction. So a job's
  final state and its deliveries are committed together, and each event goes out once.
* **Publishing is cheap**: :meth:`WebhookService.publish` only stores one pending delivery
  per subscribed endpoint and wakes the dispatcher; it never touches the network.
* **Dispatch, concurrent and fair**: one scheduler thread per process claims due
  deliveries (atomically, across processes and instances: the store pushes a claimed
  delivery's due time past the attempt, a lease) and hands them to ``concurrency``
  sender threads. At most one attempt per endpoint is in flight (an endpoint receives
  its messages one at a time, in order), and at most half of the senders serve one API
  key, so slow endpoints of one key never hold back another key's deliveries.
* **Attempts**: signed (Standard Webhooks), the SSRF guard checked again (DNS can change),
  redirects never followed, each with ``timeout_seconds`` per connect/read/write.
  Failures (non-2xx, timeouts, connection errors) are retried with exponential backoff
  ``backoff_seconds * 2**(attempts-1)``, capped at an hour, up to ``max_attempts``;
  ``410 Gone`` stops at once. Nothing a receiver or the store does ends the threads.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import httpx

from mlsharp._version import __version__
from mlsharp.errors import BadRequest, NotFound, ServiceUnavailable
from mlsharp.service.webhooks.model import (
    Attempt,
    Claimed,
    Delivery,
    NewDelivery,
    Webhook,
    attempt_outcome,
    check_event,
    message_body,
    new_deliveries,
    new_webhook,
    short_error,
)
from mlsharp.service.webhooks.ports import WebhookStore
from mlsharp.service.webhooks.signing import sign
from mlsharp.service.webhooks.ssrf import check_url

log = logging.getLogger("mlsharp.webhooks")

#: Seconds between looks at the store when nothing woke the scheduler (work published
#: by another process or instance, a retry coming due).
POLL_SECONDS = 0.25
#: Seconds a claimed attempt may take beyond its timeout before others may retry it.
_LEASE_MARGIN_S = 30.0


class WebhookService:
    """Registered webhooks plus a dispatcher that delivers, signs and retries.

    ``publish`` only stores; ``start`` runs the dispatcher (resuming anything pending
    from before a restart); ``stop`` ends it. ``render(record)`` turns an outbox entry's
    record into the message's ``data``; ``transport`` lets tests plug in an ``httpx``
    transport; ``on_attempt(event, ok)`` is called after each attempt (metrics).
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        allow_private: bool = False,
        max_attempts: int = 6,
        backoff_seconds: float = 2.0,
        timeout_seconds: float = 10.0,
        concurrency: int = 8,
        max_per_owner: int = 10,
        render: Callable[[str], dict[str, Any]] = json.loads,
        transport: httpx.BaseTransport | None = None,
        on_attempt: Callable[[str, bool], None] | None = None,
    ) -> None:
        if max_attempts < 1 or concurrency < 1 or max_per_owner < 1:
            raise ValueError("max_attempts, concurrency and max_per_owner must be at least 1")
        if backoff_seconds < 0 or timeout_seconds <= 0:
            raise ValueError("backoff_seconds must be >= 0 and timeout_seconds > 0")
        self.store = store
        self.allow_private = allow_private
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.max_per_owner = max_per_owner
        self._render = render
        self._on_attempt = on_attempt
        self._dispatcher = _Dispatcher(
            store,
            self._attempt,
            self.relay,
            concurrency=concurrency,
            lease_seconds=timeout_seconds * 3 + _LEASE_MARGIN_S,
            client=lambda: httpx.Client(
                transport=transport,
                timeout=timeout_seconds,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=2 * concurrency),
            ),
        )

    # -- endpoints -----------------------------------------------------------------------

    def create(self, url: str, events: Sequence[str], owner: str | None = None) -> Webhook:
        """Register ``url`` for ``events`` (validated, de-duplicated) with a new secret.

        Raises ``BadRequest(422, "invalid_event")`` for no or unknown events,
        ``BadRequest(422, "webhook_url_refused")`` for a URL the SSRF guard refuses and
        ``BadRequest(409, "too_many_webhooks")`` past ``max_per_owner``.
        """
        hook = new_webhook(url, events, owner, allow_private=self.allow_private)
        self.store.add_webhook(hook, max_per_owner=self.max_per_owner)
        return hook

    def registered(self, owner: str | None = None) -> list[Webhook]:
        """The webhooks registered by ``owner``, oldest first."""
        return self.store.webhooks(owner)

    def get(self, webhook_id: str, owner: str | None = None) -> Webhook:
        """The webhook ``webhook_id`` of ``owner``; ``NotFound`` if there is none."""
        hook = self.store.webhook(webhook_id)
        if hook is None or (hook.owner or "") != (owner or ""):
            raise NotFound(f"no webhook {webhook_id!r}")
        return hook

    def delete(self, webhook_id: str, owner: str | None = None) -> None:
        """Remove a webhook and its deliveries (pending ones are dropped); ``NotFound`` if none."""
        self.get(webhook_id, owner)
        if not self.store.remove_webhook(webhook_id):
            raise NotFound(f"no webhook {webhook_id!r}")
        self._dispatcher.wake()

    # -- deliveries ----------------------------------------------------------------------

    def publish(self, event: str, data: dict[str, Any], owner: str | None = None) -> list[str]:
        """Queue ``event`` for every webhook of ``owner`` subscribed to it; returns the ids.

        The body is ``{"type": event, "timestamp": <ISO-8601 UTC>, "data": data}``. Only
        deliveries are stored and the dispatcher woken: no network I/O here. Raises
        ``BadRequest(422, "invalid_event")`` for an unknown event and ``TypeError`` if
        ``data`` is not JSON-serialisable.
        """
        check_event(event)
        now = time.time()
        body = message_body(event, data, now)
        created = new_deliveries(self.store.webhooks(owner), event, body, now)
        self.store.add_deliveries(created)
        if created:
            self._dispatcher.wake()
        return [d.id for d in created]

    def deliveries(
        self, webhook_id: str, limit: int = 100, owner: str | None = None
    ) -> list[Delivery]:
        """The latest ``limit`` deliveries of a webhook, newest first; ``NotFound`` if unknown."""
        self.get(webhook_id, owner)
        return self.store.deliveries(webhook_id, max(0, int(limit)))

    def pending_count(self) -> int:
        """Deliveries not finished yet and events not relayed yet (over every process
        sharing the store)."""
        return self.store.pending_count()

    def relay(self, limit: int = 100) -> int:
        """Turn up to ``limit`` outbox entries into deliveries; how many deliveries.

        An entry whose record cannot be rendered is dropped (logged), so it cannot block
        the ones behind it.
        """
        created = 0
        for entry in self.store.outbox(limit):
            now = time.time()
            try:
                body = message_body(entry.event, self._render(entry.record), now)
            except Exception:  # a damaged record: its event cannot be sent
                log.exception("outbox entry %s cannot be rendered; dropped", entry.key)
                self.store.fan_out(entry, _none)
                continue
            make = functools.partial(_deliveries_of, event=entry.event, body=body, now=now)
            created += self.store.fan_out(entry, make)
        return created

    def wake(self) -> None:
        """Look for new outbox entries and due deliveries now (a job just ended)."""
        self._dispatcher.wake()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start dispatching (daemon threads); pending deliveries from before resume."""
        self._dispatcher.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop dispatching, waiting up to ``timeout`` seconds for attempts in flight.

        Whatever is still pending stays stored and is resumed by the next :meth:`start`
        (or another process).
        """
        self._dispatcher.stop(timeout)

    def close(self) -> None:
        """Stop dispatching and close the store."""
        self.stop()
        self.store.close()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no delivery is pending or in flight (``True``) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self._dispatcher.busy() or self.store.pending_count():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # -- one attempt ---------------------------------------------------------------------

    def _attempt(self, client: httpx.Client, due: Claimed) -> None:
        """Send ``due`` once and record what happened."""
        started, t0 = time.time(), time.monotonic()
        status_code: int | None = None
        error: str | None = None
        refused = False
        try:
            check_url(due.url, allow_private=self.allow_private)  # DNS may have changed
        except BadRequest as exc:
            error, refused = str(exc)[:200], True
        if not refused:
            body = due.body.encode("utf-8")
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "user-agent": f"mlsharp/{__version__}",
                "webhook-id": due.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(due.secret, due.id, timestamp, body),
            }
            try:
                # Stream so the receiver's response body is never read into memory.
                with client.stream("POST", due.url, content=body, headers=headers) as resp:
                    status_code = resp.status_code
            except (httpx.HTTPError, OSError) as exc:
                error = short_error(exc)
        ok, status, next_at = attempt_outcome(
            status_code,
            due.number,
            give_up=refused,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )
        if status_code is not None and not ok:
            log.info("webhook %s attempt %d: HTTP %d", due.id, due.number, status_code)
        elif error is not None:
            log.info("webhook %s attempt %d: %s", due.id, due.number, error)
        # Before recording, so wait_idle() returning implies the callback has run.
        if self._on_attempt is not None:
            try:
                self._on_attempt(due.event, ok)
            except Exception:  # a faulty metrics hook must not stop deliveries
                log.exception("webhook on_attempt callback failed")
        duration_ms = (time.monotonic() - t0) * 1000.0
        attempt = Attempt(due.number, started, status_code, error, duration_ms)
        self.store.record(due.id, attempt, status, next_at)


def _none(hooks: list[Webhook]) -> list[NewDelivery]:
    """No delivery (an outbox entry that cannot be sent)."""
    return []


def _deliveries_of(hooks: list[Webhook], *, event: str, body: str, now: float) -> list[NewDelivery]:
    """One delivery of ``body`` per webhook subscribed to ``event``."""
    return new_deliveries(hooks, event, body, now)


class _Dispatcher:
    """A scheduler thread claiming due deliveries for a pool of sender threads, within
    the bounds described in the module docstring."""

    def __init__(
        self,
        store: WebhookStore,
        attempt: Callable[[httpx.Client, Claimed], None],
        relay: Callable[[], int],
        *,
        concurrency: int,
        lease_seconds: float,
        client: Callable[[], httpx.Client],
    ) -> None:
        self.store = store
        self.attempt = attempt
        self.relay = relay
        self.concurrency = concurrency
        #: Attempts one API key may have in flight at once.
        self.per_owner = max(1, concurrency // 2)
        self.lease_seconds = lease_seconds
        self._new_client = client
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None
        self._hooks_in_flight: set[str] = set()
        self._owners_in_flight: Counter[str] = Counter()
        self._futures: set[Future[None]] = set()

    def wake(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    def busy(self) -> bool:
        """Whether an attempt is in flight in this process."""
        with self._lock:
            return bool(self._futures)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stopping.clear()  # a stop() that timed out is cancelled
            return
        self._stopping.clear()
        self._client = self._new_client()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="mlsharp-webhook")
        self._thread = threading.Thread(target=self._run, name="mlsharp-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        thread = self._thread
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return
            self._thread = None
        with self._lock:
            futures = set(self._futures)
        wait_futures(futures, max(0.0, deadline - time.monotonic()))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()  # an attempt still running fails; its lease brings it back
            self._client = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Clear before looking, so a publish after the look still wakes the wait.
            self._wake.clear()
            try:
                self.relay()
                self._fill()
                pause = self._pause()
            except ServiceUnavailable as error:  # Redis away: wait, then look again
                log.warning("webhook dispatcher: %s", error)
                pause = 2.0
            except Exception:  # a bug or a database hiccup must not end delivery
                log.exception("webhook dispatcher error; continuing")
                pause = 0.5
            self._wake.wait(pause)

    def _fill(self) -> None:
        """Claim due deliveries while a sender is free and the bounds allow."""
        while not self._stopping.is_set():
            with self._lock:
                if len(self._futures) >= self.concurrency:
                    return
                skip_hooks = set(self._hooks_in_flight)
                skip_owners = {o for o, n in self._owners_in_flight.items() if n >= self.per_owner}
            now = time.time()
            due = self.store.claim(
                now,
                now + self.lease_seconds,
                skip_webhooks=skip_hooks,
                skip_owners=skip_owners,
            )
            if due is None:
                return
            owner = due.owner or ""
            with self._lock:
                self._hooks_in_flight.add(due.webhook_id)
                self._owners_in_flight[owner] += 1
                assert self._pool is not None
                future = self._pool.submit(self._send, due)
                self._futures.add(future)
            future.add_done_callback(functools.partial(self._sent, due=due))

    def _send(self, due: Claimed) -> None:
        assert self._client is not None
        try:
            self.attempt(self._client, due)
        except Exception:  # the store failed to record it: the lease brings it back
            log.exception("webhook %s: attempt %d not recorded", due.id, due.number)

    def _sent(self, future: Future[None], *, due: Claimed) -> None:
        with self._lock:
            self._futures.discard(future)
            self._hooks_in_flight.discard(due.webhook_id)
            owner = due.owner or ""
            self._owners_in_flight[owner] -= 1
            if self._owners_in_flight[owner] <= 0:
                del self._owners_in_flight[owner]
        self._wake.set()

    def _pause(self) -> float:
        """Seconds until the next look: the next due time, at most ``POLL_SECONDS``."""
        next_due = self.store.next_due()
        if next_due is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.0, next_due - time.time())) or POLL_SECONDS
