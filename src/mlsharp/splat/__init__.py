"""Writers (and readers) of Gaussian splat files. NumPy only: nothing here imports torch.

``write(gaussians, dest, format)`` dispatches on the output format; ``FORMATS`` lists the
formats available. Today that is ``"ply"`` (the exact layout of Apple's ml-sharp).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.splat.ply import PlyFormatError, read_ply, read_ply_raw, write_ply

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "SUFFIXES",
    "PlyFormatError",
    "SplatFormat",
    "read_ply",
    "read_ply_raw",
    "write",
    "write_ply",
]

#: Output format names accepted by :func:`write`.
SplatFormat = Literal["ply"]

Writer = Callable[[Gaussians, "str | os.PathLike[str]"], Path]

#: Registry of writers keyed by format name; add new formats here.
_WRITERS: dict[str, Writer] = {
    "ply": write_ply,
}

#: The available output formats, in registry order.
FORMATS: tuple[str, ...] = tuple(_WRITERS)

#: File name suffix of each format (what follows the scene's stem).
SUFFIXES: dict[str, str] = {"ply": ".ply"}

#: HTTP media type of each format. PLY has no registered type; ``application/x-ply`` is
#: the conventional unregistered one.
MEDIA_TYPES: dict[str, str] = {"ply": "application/x-ply"}


def write(gaussians: Gaussians, dest: str | os.PathLike[str], format: SplatFormat = "ply") -> Path:
    """Write ``gaussians`` to ``dest`` in ``format`` (one of :data:`FORMATS`) atomically.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``format`` is not a known format.
    """
    writer = _WRITERS.get(format)
    if writer is None:
        known = ", ".join(FORMATS)
        raise ConfigError(f"unknown output format {format!r} (choose from: {known})")
    return writer(gaussians, dest)
