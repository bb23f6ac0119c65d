"""Logging for the service: one line per event, human text or JSON, with the request id.

The request id is a context variable set by the request middleware, so every log line
written while handling a request carries it, whichever module logs.

Client-given values (a URL path with ``%0A``, a header, a file name) must not forge log
lines: :func:`printable` escapes control characters, the access log applies it to what
it logs, and the text format escapes every message again (JSON escapes by itself).
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s"


def printable(value: object) -> str:
    """``str(value)`` with control and other invisible characters escaped (``\\n``,
    ``\\x1b``, ``\\u2028``...), so it stays on one log line and cannot fake another."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class TextFormatter(logging.Formatter):
    """The text format, each message escaped with :func:`printable` (tracebacks, added
    after the message, keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Format ``record`` with its message made printable."""
        record.message = printable(record.message)
        return super().formatMessage(record)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as compact JSON with time, level, logger, request id and message."""
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Send ``mlsharp`` and ``uvicorn`` logs to stderr in the chosen format."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(_TEXT_FORMAT))
    for name in ("mlsharp", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # Our middleware logs each request with its id; uvicorn's access log would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
