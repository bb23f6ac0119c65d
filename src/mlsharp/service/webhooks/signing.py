"""Standard Webhooks signing (https://www.standardwebhooks.com).

Every request carries ``webhook-id`` (the message id, the same on every retry so a
receiver can de-duplicate), ``webhook-timestamp`` (unix seconds, fresh per attempt) and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over ``"{id}.{timestamp}.{body}"``,
keyed with the base64-decoded part of the ``whsec_`` secret). :func:`sign` and
:func:`verify` are the two halves; receivers written in Python can use :func:`verify`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

_SECRET_PREFIX = "whsec_"


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
