"""The SSRF guard of webhook URLs: :func:`check_url`.

It refuses non-http(s) URLs, URLs with credentials and, unless ``allow_private``, any
host that resolves to a non-public address (loopback, private, link-local, multicast,
reserved, unspecified; IPv4-mapped / 6to4 / Teredo / NAT64 IPv6 are unwrapped). It runs
when a webhook is created and again before every attempt, because DNS can change. (A
resolver that answers differently between the check and the connection, "DNS
rebinding", is not covered; redirects are, since they are never followed.)
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from mlsharp.errors import BadRequest

_MAX_URL_LEN = 2048
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _refuse(message: str) -> BadRequest:
    return BadRequest(f"webhook URL refused: {message}", status=422, code="webhook_url_refused")


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Any]:
    """The address itself plus any IPv4 address an IPv6 address wraps."""
    found: list[Any] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            found.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
        if ip in _NAT64:
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (
        not ip.is_global
        or ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a webhook URL that is malformed or (unless ``allow_private``) not public.

    Raises ``BadRequest(status=422, code="webhook_url_refused")`` when the scheme is not
    http/https, there is no host, the URL carries credentials, or — unless ``allow_private``
    — the host does not resolve or any address it resolves to (``socket.getaddrinfo``; literal
    IPv4/IPv6 too, IPv4-mapped IPv6 unwrapped) is loopback, private, link-local, multicast,
    reserved or unspecified. With ``allow_private`` no name resolution is done.
    """
    if not isinstance(url, str) or not url:
        raise _refuse("the URL is empty")
    if len(url) > _MAX_URL_LEN:
        raise _refuse(f"the URL is longer than {_MAX_URL_LEN} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _refuse("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _refuse(f"the URL cannot be parsed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _refuse(f"scheme {scheme or '(none)'!r} is not http or https")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise _refuse("the URL must not contain a user name or password")
    host = parts.hostname
    if not host:
        raise _refuse("the URL has no host")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(
            host, port or (443 if scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (OSError, UnicodeError):
        raise _refuse(f"host {host!r} cannot be resolved") from None
    if not infos:
        raise _refuse(f"host {host!r} cannot be resolved")
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise _refuse(f"host {host!r} resolves to an unusable address") from None
        for candidate in _embedded_ipv4(ip):
            if not _is_public(candidate):
                raise _refuse(
                    f"host {host!r} resolves to {ip}, which is not a public address"
                    " (loopback, private, link-local, multicast or reserved)"
                )
