"""File names that come from clients: made safe and bounded in one place.

Names arrive from uploads (``filename`` of a multipart part), zip members (often made on
Windows, with ``\\`` between folders), and the command line's input files; they become
job names, result file names, names inside the batch archive and ``Content-Disposition``
headers. :func:`safe_name` turns any of them into one plain file name:

* folders are dropped, whichever separator (``/`` or ``\\``) the client used;
* Unicode is normalised to NFC (macOS writes decomposed names into zips);
* control and other invisible characters (``\\n``, ``\\x00``, zero-width spaces, bidi
  marks, lone surrogates) are removed, so names never forge log lines or headers;
* the result is at most :data:`MAX_NAME_BYTES` bytes of UTF-8, cut at a character
  boundary and keeping a short extension, so every name derived from it (a stem plus
  the longest output suffix, plus the temporary suffix of an atomic write) stays far
  below the 255-byte limit of common file systems;
* an empty result, ``.`` or ``..`` becomes the given default.

:func:`content_disposition` builds the download header from such a name (RFC 6266:
an ASCII ``filename`` and, for other names, a UTF-8 ``filename*``).

This module imports nothing heavy: the CLI uses it too.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

__all__ = ["MAX_NAME_BYTES", "content_disposition", "safe_name", "safe_stem"]

MAX_NAME_BYTES = 128
"""Longest client-given name kept, in bytes of UTF-8 (an output name adds at most ~20)."""

_MAX_EXTENSION_BYTES = 16  # a longer "extension" is just part of the name


def safe_name(raw: object, *, default: str = "image", max_bytes: int = MAX_NAME_BYTES) -> str:
    """A plain, printable file name of at most ``max_bytes`` UTF-8 bytes (see the module).

    ``raw`` may be any client-given name or path (``None`` gives ``default``).
    """
    text = unicodedata.normalize("NFC", "" if raw is None else str(raw))
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if ch.isprintable()).strip()
    if text in ("", ".", ".."):
        return default
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    stem, dot, extension = text.rpartition(".")
    suffix = f".{extension}"
    if not (dot and stem) or len(suffix.encode("utf-8")) > _MAX_EXTENSION_BYTES:
        stem, suffix = text, ""  # no extension worth keeping: cut the whole name
    kept = _cut_utf8(stem, max_bytes - len(suffix.encode("utf-8"))).rstrip()
    return f"{kept}{suffix}" if kept else default


def safe_stem(raw: object, *, default: str = "scene", max_bytes: int = MAX_NAME_BYTES) -> str:
    """The :func:`safe_name` of ``raw`` without its last extension (``photo.jpg`` → ``photo``).

    Used to name outputs after their input: ``<stem><format suffix>``.
    """
    name = safe_name(raw, default="", max_bytes=max_bytes)
    stem = name.rpartition(".")[0] if "." in name.lstrip(".") else name
    return stem or default


def content_disposition(name: str, disposition: str = "attachment") -> str:
    """A ``Content-Disposition`` value naming the download ``name`` (made safe first).

    ASCII names give ``attachment; filename="name"``; others add an RFC 5987
    ``filename*=UTF-8''...`` with an ASCII stand-in in ``filename`` for old clients.
    """
    name = safe_name(name, default="download")
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in name)
    value = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits in ``max_bytes`` bytes of UTF-8."""
    return text.encode("utf-8")[: max(0, max_bytes)].decode("utf-8", errors="ignore")
