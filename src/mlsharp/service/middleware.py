"""ASGI middleware: request ids, access logs and metrics (the body's bounds: ``body.py``).

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses (event streams, archives)
pass through untouched.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsharp.service.http_errors import error_response
from mlsharp.service.logs import printable, request_id_var
from mlsharp.service.metrics import Metrics

log = logging.getLogger("mlsharp.access")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


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
