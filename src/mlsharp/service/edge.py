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
* :class:`BodyTimeoutMiddleware`: a request's body must have arrived
  ``body_timeout_seconds`` after its headers, else 408 (a slow sender holds a connection
  and a worker of the event loop no longer than that).

The client address is the connection's peer, or with ``trusted_proxies`` the address a
trusted proxy names in ``X-Forwarded-For`` (uvicorn's ``ProxyHeadersMiddleware``, set up
in ``app.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsharp.errors import BadRequest, Forbidden, MlsharpError
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


class _BodyTimeout(HTTPException):
    """Raised from ``receive`` when the body is late. An HTTPException, because FastAPI
    turns any other exception raised while it parses a body into a 400."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {seconds:g} s",
            headers={"Connection": "close"},
        )


class BodyTimeoutMiddleware:
    """Answers 408 when a request's body is not complete ``seconds`` after its headers.

    Only reading the body is timed: once it is complete, ``receive`` (which streaming
    responses use to notice a disconnect) waits as long as it likes.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _BodyTimeout(self.seconds) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except _BodyTimeout as error:  # raised where no handler turned it into a response
            if not started:
                response = mlsharp_error_response(
                    scope["method"], scope["path"], _as_request_error(error)
                )
                response.headers["Connection"] = "close"
                await response(scope, receive, send)


def _as_request_error(error: _BodyTimeout) -> MlsharpError:
    return BadRequest(str(error.detail), status=408, code="request_timeout")
