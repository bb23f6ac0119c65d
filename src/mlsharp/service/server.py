"""How ``mlsharp serve`` runs uvicorn: connection limits and read timeouts.

uvicorn on its own never times out a client that sends its request headers slowly (a
connection that trickles a header line every few seconds is held forever), and accepts
any number of connections. :func:`uvicorn_options` gives ``uvicorn.run`` / ``Config``:

* ``http``: uvicorn's h11 protocol with a header timeout: a request's headers must be
  complete ``header_timeout_seconds`` after the connection opened (or after the previous
  response on a kept-alive connection), else the connection is closed;
* ``timeout_keep_alive``: an idle kept-alive connection closes after ``KEEP_ALIVE_SECONDS``;
* ``limit_concurrency``: beyond ``max_connections`` connections or requests, new requests
  are answered 503 at once;
* ``h11_max_incomplete_event_size``: request line plus headers at most ``MAX_HEADER_BYTES``
  (431/400 beyond);
* ``proxy_headers`` off: ``X-Forwarded-For`` is read by the app, from ``trusted_proxies``.

The body has its own deadline in the app (``body.BodyTimeoutMiddleware``). Behind a
reverse proxy (deploy/nginx.conf) the proxy's timeouts apply first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mlsharp.config import Settings

#: Seconds an idle kept-alive connection stays open (uvicorn's default).
KEEP_ALIVE_SECONDS = 5.0
#: Largest request line plus headers, in bytes (h11's default).
MAX_HEADER_BYTES = 16 * 1024


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword options of ``uvicorn.run`` / ``uvicorn.Config`` from the settings."""
    return {
        # X-Forwarded-For is honoured by the app itself, from trusted_proxies only
        # (uvicorn would trust 127.0.0.1 by default).
        "proxy_headers": False,
        "http": header_timeout_protocol(settings.header_timeout_seconds),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing connections whose request headers are late."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        """Arms a timer whenever the connection waits for a request's headers."""

        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if not self._between_requests():
                self._disarm()  # the headers are complete: the request runs

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
