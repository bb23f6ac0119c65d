"""What the service checks at its edge, before a route reads a request's body.

FastAPI reads and parses a form body *before* it resolves a route's dependencies, so an
API key checked only in a dependency was checked after a whole upload (up to
``max_upload_bytes``) had been received. Here:

* :func:`authenticate`: the one check of a request's API key, the per-client rate limit
  and the throttle of wrong keys per client address. The dependencies in ``deps.py`` and
  the middleware below both use it.
* :class:`AuthBeforeBodyMiddleware`: for requests that carry a body (``POST``, ``PUT``,
  ``PATCH`` under ``/v1/``: every such route is protected), runs :func:`authenticate` on
  the headers alone and answers 401/403/429 before a byte of the body is read. The
  route's dependency then reuses its answer (one rate-limit token per request, not two).

The size and the deadline of the body itself are bounded in :mod:`mlsharp.service.body`.

The client address is the connection's peer, or with ``trusted_proxies`` the address a
trusted proxy names in ``X-Forwarded-For`` (uvicorn's ``ProxyHeadersMiddleware``, set up
in ``app.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from mlsharp.errors import Forbidden, MlsharpError
from mlsharp.service.http_errors import mlsharp_error_response
from mlsharp.service.state import ServiceState

#: Where :class:`AuthBeforeBodyMiddleware` leaves its answer for the route's dependency.
_CHECKED_OWNER = "mlsharp_checked_owner"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def authenticate(state: ServiceState, headers: Mapping[str, str], address: str) -> str | None:
    """Check a request's API key and rate limit; returns the owner (``None`` when open).

    A client address whose wrong keys emptied its bucket (``auth_failure_limit``) gets
    :class:`~mlsharp.errors.RateLimited` before its key is even looked at, so keys cannot
    be guessed faster than that limit; each wrong key (403) takes a token. A missing key
    (401) is not a guess and is not counted. Raises ``Unauthorized``, ``Forbidden`` or
    ``RateLimited``.
    """
    keys = state.api_keys
    failures = state.auth_failures if keys.required else None
    if failures is not None and keys.presented(headers) is not None:
        failures.check(address, take=False)
    try:
        owner = keys.identify(headers)
    except Forbidden:
        if failures is not None:
            failures.check(address)
        raise
    if state.limiter is not None:
        state.limiter.check(owner or address)
    return owner


def client_address(scope: Scope) -> str:
    """The client's address of a request (``unknown`` when the server gives none)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def checked_owner(scope: Scope) -> tuple[str | None] | None:
    """``(owner,)`` when :class:`AuthBeforeBodyMiddleware` already authenticated this
    request, else ``None``."""
    return (scope.get("state") or {}).get(_CHECKED_OWNER)


class AuthBeforeBodyMiddleware:
    """Authenticates requests that carry a body before their body is read (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = getattr(scope.get("app"), "state", None)
        service = getattr(state, "mlsharp", None)
        if (
            scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or not scope["path"].startswith("/v1/")
            or service is None  # the lifespan has not built the service (yet)
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            # A thread: the limiters of the scale-out mode talk to Redis.
            owner = await run_in_threadpool(authenticate, service, headers, client_address(scope))
        except MlsharpError as error:
            response = mlsharp_error_response(scope["method"], scope["path"], error)
            response.headers["Connection"] = "close"  # the body stays unread
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[_CHECKED_OWNER] = (owner,)
        await self.app(scope, receive, send)
