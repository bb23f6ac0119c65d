"""One JSON error schema for every failure, mapped in one place.

``{error, message, status_code, path, timestamp, request_id}``: ``error`` is a stable
machine-readable code, ``message`` a sentence for people. Internal details (tracebacks,
file paths of the server) never reach clients. Unexpected exceptions (bugs) are caught
by ``middleware.RequestContextMiddleware``, which logs them with the request id and answers
a generic 500: Starlette's own last-resort handler would run after the id is gone.
"""

from __future__ import annotations

import datetime as dt
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlsharp.errors import MlsharpError
from mlsharp.service.logs import printable, request_id_var

log = logging.getLogger("mlsharp.service")

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


def code_for_status(status: int) -> str:
    """The error code of a plain HTTP status (``http_error`` for one without its own)."""
    return _CODES_BY_STATUS.get(status, "http_error")


def error_response(
    path: str,
    status: int,
    code: str,
    message: str,
    *,
    retry_after: float | None = None,
) -> JSONResponse:
    """A response in the error schema (used by handlers and middleware alike)."""
    request_id = request_id_var.get()
    body = {
        "error": code,
        "message": message,
        "status_code": status,
        "path": path,
        "timestamp": dt.datetime.now(dt.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "request_id": request_id,
    }
    headers = {"X-Request-ID": request_id}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(body, status_code=status, headers=headers)


def mlsharp_error_response(method: str, path: str, error: MlsharpError) -> JSONResponse:
    """The response of an :class:`MlsharpError` (server errors are logged)."""
    status = error.http_status
    if status >= 500:
        log.error("%s %s failed: %s", printable(method), printable(path), printable(error))
    response = error_response(
        path, status, error.code, str(error), retry_after=getattr(error, "retry_after", None)
    )
    if status == 401:  # RFC 9110: a 401 names the scheme to use
        response.headers["WWW-Authenticate"] = 'Bearer realm="mlsharp"'
    return response


def _describe_validation(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the error schema."""

    @app.exception_handler(MlsharpError)
    async def _mlsharp_error(request: Request, error: MlsharpError) -> JSONResponse:
        return mlsharp_error_response(request.method, request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(
            request.url.path, 422, "validation_error", _describe_validation(error)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        status = error.status_code
        code = code_for_status(status)
        message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
        response = error_response(request.url.path, status, code, message)
        response.headers.update(error.headers or {})  # e.g. Allow on a 405
        return response
