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
    "format_for_path",
    "read",
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

#: Registry of readers keyed by format name (formats that can be read back).
_READERS: dict[str, Callable[[str | os.PathLike[str]], Gaussians]] = {
    "ply": read_ply,
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


def format_for_path(path: str | os.PathLike[str]) -> str:
    """The format name a file name implies by its suffix (longest matching suffix wins).

    Raises:
        ConfigError: no known format uses that suffix.
    """
    name = Path(path).name.lower()
    matches = [fmt for fmt, suffix in SUFFIXES.items() if name.endswith(suffix)]
    if not matches:
        known = ", ".join(sorted(set(SUFFIXES.values())))
        raise ConfigError(f"cannot tell the format of {name!r} from its suffix (known: {known})")
    return max(matches, key=lambda fmt: len(SUFFIXES[fmt]))


def read(path: str | os.PathLike[str], format: str | None = None) -> Gaussians:
    """Read a scene file written in ``format`` (default: chosen by its suffix).

    Raises:
        ConfigError: the format is unknown or cannot be read back.
    """
    fmt = format or format_for_path(path)
    reader = _READERS.get(fmt)
    if reader is None:
        known = ", ".join(_READERS)
        raise ConfigError(f"cannot read format {fmt!r} (readable: {known})")
    return reader(path)
