"""What webhooks are made of, and the rules every backend shares.

Records (:class:`Webhook`, :class:`Delivery`, :class:`Attempt`), the message body
(:func:`message_body`), how a new endpoint is checked (:func:`new_webhook`,
:func:`check_room`) and what an attempt's answer leads to (:func:`attempt_outcome`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mlsharp.errors import BadRequest
from mlsharp.service.webhooks.signing import new_secret
from mlsharp.service.webhooks.ssrf import check_url

#: The events a webhook can subscribe to.
EVENTS: tuple[str, ...] = ("job.succeeded", "job.failed")

_MAX_BACKOFF_S = 3600.0
_MAX_ERROR_LEN = 200


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
    payload: dict[str, Any]


@dataclass(frozen=True)
class NewDelivery:
    """A pending delivery to create: its id, endpoint, event and signed body."""

    id: str
    webhook_id: str
    event: str
    body: str
    created_at: float


@dataclass(frozen=True)
class Claimed:
    """A due delivery a dispatcher took (its due time pushed past the attempt's lease)."""

    id: str
    webhook_id: str
    owner: str | None
    url: str
    secret: str
    event: str
    body: str
    #: 1 for the first attempt.
    number: int


def check_event(event: str) -> str:
    """``event`` if it is one of :data:`EVENTS`, else ``BadRequest(422, invalid_event)``."""
    if event not in EVENTS:
        raise BadRequest(
            f"unknown event {event!r} (known: {', '.join(EVENTS)})",
            status=422,
            code="invalid_event",
        )
    return event


def new_webhook(
    url: str, events: Sequence[str] | str, owner: str | None, *, allow_private: bool
) -> Webhook:
    """A new endpoint for ``url`` and ``events`` (validated, de-duplicated), with a new secret.

    Raises ``BadRequest(422, "invalid_event")`` for no or unknown events and
    ``BadRequest(422, "webhook_url_refused")`` for a URL :func:`check_url` refuses.
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
    for event in wanted:
        check_event(event)
    check_url(url, allow_private=allow_private)
    return Webhook(
        id="wh_" + secrets.token_urlsafe(16),
        url=url,
        events=wanted,
        secret=new_secret(),
        created_at=time.time(),
        owner=owner,
    )


def check_room(registered: int, max_per_owner: int) -> None:
    """Refuse one more webhook of an owner who has ``registered`` (409 ``too_many_webhooks``).

    Stores call it in the transaction that adds the webhook, so concurrent requests
    cannot exceed the limit.
    """
    if registered >= max_per_owner:
        raise BadRequest(
            f"at most {max_per_owner} webhooks per API key; delete one first",
            status=409,
            code="too_many_webhooks",
        )


def iso_utc(ts: float) -> str:
    """Unix seconds as ISO-8601 UTC with milliseconds and a ``Z``."""
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_body(event: str, data: dict[str, Any], now: float) -> str:
    """The JSON body of a message: ``{"type", "timestamp", "data"}``, compact."""
    payload = {"type": event, "timestamp": iso_utc(now), "data": data}
    return json.dumps(payload, separators=(",", ":"))


def new_deliveries(
    hooks: Sequence[Webhook], event: str, body: str, now: float
) -> list[NewDelivery]:
    """One pending delivery of ``body`` for each of ``hooks`` subscribed to ``event``."""
    return [
        NewDelivery("msg_" + secrets.token_urlsafe(16), hook.id, event, body, now)
        for hook in hooks
        if event in hook.events
    ]


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
    exponential backoff, capped, at the epoch time ``next_at``.
    """
    ok = status_code is not None and 200 <= status_code < 300
    if ok:
        return True, "succeeded", None
    if give_up or status_code == 410 or number >= max_attempts:
        return False, "failed", None
    backoff = min(backoff_seconds * 2 ** (number - 1), _MAX_BACKOFF_S)
    return False, "pending", time.time() + backoff


def short_error(exc: BaseException) -> str:
    """One line naming ``exc`` (type and first line of text), at most 200 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return message[:_MAX_ERROR_LEN]
