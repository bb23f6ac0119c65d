"""Writers (and readers) of Gaussian splat files and depth maps. NumPy only: no torch here.

``write(gaussians, dest, format, **options)`` dispatches on the output format and
``read(path)`` on the file name's suffix (and, for ``.ply``, on the layout inside).
Formats (see ``docs/formats.md``):

============== ======================= ==============================================
format         suffix                  content
============== ======================= ==============================================
ply            ``.ply``                Apple ml-sharp's reference layout
ply-standard   ``.standard.ply``       viewer-safe 3DGS PLY; options ``frame``, ``layout``
splat          ``.splat``              antimatter15's 32-byte records; option ``frame``
spz            ``.spz``                Niantic SPZ v2 (gzip); options ``frame``, ``version``
depth          ``.depth.png``          16-bit depth PNG (needs a prediction)
depth-npy      ``.depth.npy``          float32 metric depth (needs a prediction)
depth-preview  ``.depth.preview.png``  coloured depth picture (needs a prediction)
============== ======================= ==============================================

Readers return :class:`~mlsharp.gaussians.Gaussians` in the model's OpenCV frame with
linear-RGB colours; depth files are read with the functions of :mod:`mlsharp.splat.depth`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.splat.antisplat import read_splat, write_splat
from mlsharp.splat.common import FRAMES, Frame, SceneFormatError, check_frame
from mlsharp.splat.depth import (
    DepthUnavailable,
    write_depth_npy,
    write_depth_png,
    write_depth_preview,
)
from mlsharp.splat.ply import (
    PlyFormatError,
    is_reference_layout,
    read_ply,
    read_ply_raw,
    write_ply,
)
from mlsharp.splat.spz import read_spz, write_spz
from mlsharp.splat.standard_ply import read_standard_ply, write_standard_ply

__all__ = [
    "DEPTH_FORMATS",
    "FORMATS",
    "FRAMES",
    "FRAME_FORMATS",
    "MEDIA_TYPES",
    "SUFFIXES",
    "DepthUnavailable",
    "Frame",
    "PlyFormatError",
    "SceneFormatError",
    "SplatFormat",
    "check_frame",
    "format_for_path",
    "is_reference_layout",
    "parse_formats",
    "read",
    "read_ply",
    "read_ply_raw",
    "read_splat",
    "read_spz",
    "read_standard_ply",
    "write",
    "write_ply",
    "write_splat",
    "write_spz",
    "write_standard_ply",
]

#: Output format names accepted by :func:`write`.
SplatFormat = Literal["ply", "ply-standard", "splat", "spz", "depth", "depth-npy", "depth-preview"]

Writer = Callable[..., Path]

#: Registry of writers keyed by format name; add new formats here. A writer takes the
#: Gaussians, the destination and the keyword options listed in :data:`OPTIONS`.
_WRITERS: dict[str, Writer] = {
    "ply": write_ply,
    "ply-standard": write_standard_ply,
    "splat": write_splat,
    "spz": write_spz,
    "depth": write_depth_png,
    "depth-npy": write_depth_npy,
    "depth-preview": write_depth_preview,
}

#: Registry of readers keyed by format name (formats that hold a scene and can be read
#: back). A reader takes the path and the ``frame`` option where :data:`FRAME_FORMATS` has it.
_READERS: dict[str, Callable[..., Gaussians]] = {
    "ply": read_ply,
    "ply-standard": read_standard_ply,
    "splat": read_splat,
    "spz": read_spz,
}

#: Keyword options each writer accepts (anything else is a :class:`ConfigError`).
OPTIONS: dict[str, frozenset[str]] = {
    "ply": frozenset(),
    "ply-standard": frozenset({"frame", "layout"}),
    "splat": frozenset({"frame"}),
    "spz": frozenset({"frame", "version"}),
    "depth": frozenset(),
    "depth-npy": frozenset(),
    "depth-preview": frozenset(),
}

#: Formats that take a coordinate ``frame`` option, with their default frame.
FRAME_FORMATS: dict[str, Frame] = {"ply-standard": "opencv", "splat": "opencv", "spz": "opengl"}

#: Formats written from the scene's depth map (they need a prediction, not a file).
DEPTH_FORMATS: tuple[str, ...] = ("depth", "depth-npy", "depth-preview")

#: The available output formats, in registry order.
FORMATS: tuple[str, ...] = tuple(_WRITERS)

#: File name suffix of each format (what follows the scene's stem).
SUFFIXES: dict[str, str] = {
    "ply": ".ply",
    "ply-standard": ".standard.ply",
    "splat": ".splat",
    "spz": ".spz",
    "depth": ".depth.png",
    "depth-npy": ".depth.npy",
    "depth-preview": ".depth.preview.png",
}

#: HTTP media type of each format. PLY has no registered type; ``application/x-ply`` is
#: the conventional unregistered one. .splat, .spz and .npy have none either.
MEDIA_TYPES: dict[str, str] = {
    "ply": "application/x-ply",
    "ply-standard": "application/x-ply",
    "splat": "application/octet-stream",
    "spz": "application/octet-stream",
    "depth": "image/png",
    "depth-npy": "application/octet-stream",
    "depth-preview": "image/png",
}

#: What a short name asks for in ``mlsharp predict --format``: ``depth`` is the PNG, its
#: exact ``.npy`` and the coloured preview. (The service keeps one file per format name.)
CLI_ALIASES: dict[str, tuple[str, ...]] = {"depth": DEPTH_FORMATS}


def _unknown(fmt: str) -> ConfigError:
    return ConfigError(f"unknown output format {fmt!r} (choose from: {', '.join(FORMATS)})")


def write(
    gaussians: Gaussians,
    dest: str | os.PathLike[str],
    format: SplatFormat = "ply",
    **options: Any,
) -> Path:
    """Write ``gaussians`` to ``dest`` in ``format`` (one of :data:`FORMATS`) atomically.

    Args:
        gaussians: the scene.
        dest: the output path.
        format: the format name.
        **options: format options (:data:`OPTIONS`), e.g. ``frame="opengl"`` for
            ``ply-standard``, ``splat`` and ``spz``.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``format`` is unknown, or takes no such option / value.
        DepthUnavailable: a depth format for a scene without a depth map.
    """
    writer = _WRITERS.get(format)
    if writer is None:
        raise _unknown(format)
    extra = sorted(set(options) - OPTIONS[format])
    if extra:
        raise ConfigError(f"format {format!r} takes no option {extra[0]!r}")
    return writer(gaussians, dest, **options)


def parse_formats(raw: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"ply,spz,depth"`` -> known format names in order, duplicates dropped.

    Aliases of :data:`CLI_ALIASES` expand (``depth`` -> the PNG, ``.npy`` and preview).

    Raises:
        ConfigError: a name is unknown, or none is given.
    """
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    names: list[str] = []
    for part in (p.strip().lower() for p in parts):
        if not part:
            continue
        if part not in _WRITERS:
            raise _unknown(part)
        names.extend(CLI_ALIASES.get(part, (part,)))
    if not names:
        raise ConfigError(f"no output format given (choose from: {', '.join(FORMATS)})")
    return tuple(dict.fromkeys(names))


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


def read(
    path: str | os.PathLike[str], format: str | None = None, *, frame: Frame | None = None
) -> Gaussians:
    """Read a scene file written in ``format`` (default: chosen by its suffix).

    A ``.ply`` (format ``ply``) is read by its content: ml-sharp's reference layout (it
    has the supplementary elements, colours per its ``color_space``) with
    :func:`read_ply`; a plain 3DGS file (only a ``vertex`` element: a ``.standard.ply``
    renamed, another tool's output) with :func:`read_standard_ply`, i.e. sRGB DC colours
    and the frame of its ``comment frame`` line, else ``frame``, else OpenCV.

    Args:
        path: the file.
        format: its format; ``None`` picks it by suffix.
        frame: the frame the file is stored in, for formats that do not record it
            (default: the format's default, see :data:`FRAME_FORMATS`). The reference
            layout is always in the model's ``opencv`` frame.

    Returns:
        The scene in the model's OpenCV frame, colours in linear RGB.

    Raises:
        ConfigError: the format is unknown or cannot be read back (depth maps), or
            ``frame`` contradicts a reference-layout ``.ply``.
        PlyFormatError, SceneFormatError: the file is not readable in that format.
        OSError: the file cannot be opened.
    """
    fmt = format or format_for_path(path)
    if fmt == "ply":
        if not is_reference_layout(path):
            fmt = "ply-standard"  # plain 3DGS: sRGB DC and a frame comment, if any
        elif frame is not None and check_frame(frame) != "opencv":
            raise ConfigError(
                f"{Path(path).name} is in ml-sharp's reference layout, which is always in the "
                f"model's opencv frame; it cannot be read as {frame!r}"
            )
    reader = _READERS.get(fmt)
    if reader is None:
        known = ", ".join(_READERS)
        if fmt in DEPTH_FORMATS:
            raise ConfigError(
                f"{fmt!r} files hold a depth map, not a scene (readable scenes: {known})"
            )
        raise ConfigError(f"cannot read format {fmt!r} (readable: {known})")
    if frame is not None and fmt in FRAME_FORMATS:
        return reader(path, frame=check_frame(frame))
    return reader(path)
