"""ASGI middleware: request ids, access logs and metrics, and the request body limit.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses (event streams, archives)
pass through untouched.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsharp.service.http_errors import error_response
from mlsharp.service.logs import printable, request_id_var
from mlsharp.service.metrics import Metrics

log = logging.getLogger("mlsharp.access")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body. An HTTPException, because FastAPI turns any other
    exception raised while it parses a body into a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {max_bytes} bytes")


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-ID``), logs it and records its metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        offered = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _CLIENT_REQUEST_ID.match(offered) else secrets.token_hex(8)
        token = request_id_var.set(request_id)
        status = 500
        status_started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_started
            if message["type"] == "http.response.start":
                status = message["status"]
                status_started = True
                raw = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in raw):
                    raw.append((b"x-request-id", request_id.encode()))
                message["headers"] = raw
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug escaped every handler. This is the one place it is answered: here
            # the request id is still set, so the 500 and its log line carry it.
            log.exception(
                "unhandled error in %s %s", printable(scope["method"]), printable(scope["path"])
            )
            if not status_started:
                status = 500
                response = error_response(
                    scope["path"], 500, "internal_error", "internal server error; see the log"
                )
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = _route_template(scope)
            self.metrics.observe_request(scope["method"], route, status, elapsed)
            log.info(
                "%s %s -> %d in %.1f ms",
                printable(scope["method"]),
                printable(scope["path"]),  # decoded: "%0A" is a newline here
                status,
                elapsed * 1e3,
            )
            request_id_var.reset(token)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), else ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            scope["path"],
            413,
            "payload_too_large",
            f"request body exceeds the limit of {self.max_bytes} bytes",
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
