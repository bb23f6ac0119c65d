"""What the service bounds about a request's body: its size and how long it may take.

Both checks wrap ``receive`` and refuse a body by raising :class:`BodyRefused` from it;
:func:`serve_guarding_body` is the one place that turns a refusal into an answer:

* :class:`BodyLimitMiddleware`: a body over ``max_bytes`` is 413 ``payload_too_large``,
  from its ``Content-Length`` before a byte is read, else as soon as the streamed bytes
  pass the limit;
* :class:`BodyTimeoutMiddleware`: a body not complete ``seconds`` after the request's
  headers is 408 ``request_timeout`` (a slow sender holds a connection and the event
  loop's attention no longer than that).

A refusal always closes the connection: the rest of the body stays unread. Pure ASGI (not
``BaseHTTPMiddleware``), so streaming responses pass through untouched.
"""

from __future__ import annotations

import asyncio

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlsharp.service.http_errors import code_for_status, error_response


class BodyRefused(HTTPException):
    """Raised from a wrapped ``receive`` to refuse the body.

    An HTTPException because FastAPI turns any other exception raised while it parses a
    body into a 400; the app's handler for HTTPExceptions answers it in the error schema
    (with the ``Connection: close`` header it carries).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message, headers={"Connection": "close"})


def refusal_response(path: str, status: int, message: str) -> JSONResponse:
    """The error-schema response that refuses a body, closing the connection."""
    response = error_response(path, status, code_for_status(status), message)
    response.headers["Connection"] = "close"
    return response


async def serve_guarding_body(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, guarded_receive: Receive
) -> None:
    """Run ``app`` with ``guarded_receive``; a :class:`BodyRefused` it raised where no
    handler answered it (e.g. a route streaming the body itself) is answered here, unless
    a response had already started (then the connection just ends)."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, guarded_receive, tracking_send)
    except BodyRefused as refusal:
        if not started:
            response = refusal_response(scope["path"], refusal.status_code, refusal.detail)
            await response(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, by header or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body exceeds the limit of {self.max_bytes} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await refusal_response(scope["path"], 413, message)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise BodyRefused(413, message)
            return event

        await serve_guarding_body(self.app, scope, receive, send, limited_receive)


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

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyRefused(
                    408, f"the request body did not arrive within {self.seconds:g} s"
                ) from None
            if event["type"] != "http.request" or not event.get("more_body", False):
                body_done = True
            return event

        await serve_guarding_body(self.app, scope, receive, send, timed_receive)
