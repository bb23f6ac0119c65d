"""API keys.

Keys come from the settings (``MLSHARP_API_KEYS``) and are kept only as SHA-256 digests;
clients send ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``. With no keys configured
the service is open. A missing key is ``401``, a wrong one ``403``.

Rate limits (per key, and wrong keys per client address) are :mod:`mlsharp.service.limits`;
:mod:`mlsharp.service.edge` applies both before a request's body is read.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from mlsharp.errors import Forbidden, Unauthorized


def key_digest(key: str) -> str:
    """The SHA-256 hex digest under which an API key is kept."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """The accepted API keys, stored hashed; ``identify`` checks a request's headers."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(key_digest(k) for k in keys if k)

    @property
    def required(self) -> bool:
        """True when at least one key is configured."""
        return bool(self._digests)

    @staticmethod
    def presented(headers: Mapping[str, str]) -> str | None:
        """The key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``."""
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        key = headers.get("x-api-key", "").strip()
        return key or None

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """The caller's identity (a short key digest), or ``None`` when keys are not required.

        Raises :class:`Unauthorized` without a key and :class:`Forbidden` with a wrong one.
        """
        if not self.required:
            return None
        key = self.presented(headers)
        if key is None:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
        digest = key_digest(key)
        # Compare against every key in constant time so timing tells nothing.
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        if not any(matches):
            raise Forbidden("the API key is not valid")
        return digest[:16]
