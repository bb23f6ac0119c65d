"""Cache keys and the names of cached files.

* **Content addressed.** :func:`cache_key` hashes every input that determines a result:
  the pixels (dtype, shape and bytes), the focal length, the model and the export
  options. Equal inputs give equal keys, so a cached file is always a valid answer:
  entries are never invalidated, only evicted.
* **Names.** Entry ``key`` keeps one file per format, ``<key[:2]>/<key>/result.<format>``
  (:func:`blob_name`), in whatever :class:`~mlsharp.service.files.ports.Blobs` holds it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

import numpy as np

_KEY_VERSION = b"mlsharp-result-cache-v1"
_KEY_RE = re.compile(r"[0-9a-f]{2,128}")
_FORMAT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def cache_key(
    pixels: np.ndarray,
    *,
    focal_px: float,
    model_id: str,
    options: Mapping[str, object] | None = None,
) -> str:
    """Return the cache key (hex SHA-256) of a result computed from these inputs.

    Hashed, each field length-prefixed and in a fixed order: a version tag, the pixel
    dtype and shape, the C-ordered pixel bytes, ``repr(float(focal_px))``, ``model_id`` and
    ``options`` as sorted-key JSON (``None`` counts as no options, like ``{}``). Options
    must be JSON serialisable.
    """
    array = np.asarray(pixels)
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    fields = (
        _KEY_VERSION,
        array.dtype.str.encode(),
        repr(tuple(int(n) for n in array.shape)).encode(),
        data.data,  # a view: a 50-megapixel photo is hashed without a copy
        repr(float(focal_px)).encode(),
        model_id.encode(),
        json.dumps(dict(options or {}), sort_keys=True).encode(),
    )
    digest = hashlib.sha256()
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.hexdigest()


def check_key(key: str) -> str:
    """``key`` if it is a cache key (lowercase hex), else ``ValueError``."""
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid cache key {key!r} (expected lowercase hex)")
    return key


def check_format(fmt: str) -> str:
    """``fmt`` if it can name a cached file's format, else ``ValueError``."""
    if not isinstance(fmt, str) or not _FORMAT_RE.fullmatch(fmt):
        raise ValueError(f"invalid format name {fmt!r}")
    return fmt


def entry_folder(key: str) -> str:
    """The blob folder of entry ``key``."""
    return f"{key[:2]}/{key}"


def blob_name(key: str, fmt: str) -> str:
    """The blob name of the ``fmt`` file of entry ``key``."""
    return f"{entry_folder(key)}/result.{fmt}"


def parse_blob_name(name: str) -> tuple[str, str | None] | None:
    """``(key, format)`` of a blob name; ``(key, None)`` for a stray file inside an entry's
    folder; ``None`` for a name outside the layout."""
    parts = name.split("/")
    if len(parts) != 3 or not _KEY_RE.fullmatch(parts[1]) or parts[0] != parts[1][:2]:
        return None
    fmt = parts[2].removeprefix("result.") if parts[2].startswith("result.") else ""
    return parts[1], fmt if _FORMAT_RE.fullmatch(fmt) else None
