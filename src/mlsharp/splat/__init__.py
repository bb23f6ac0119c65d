"""Writers (and readers) of Gaussian splat files and depth maps. NumPy only: no torch here.

``write(gaussians, dest, format, **options)`` dispatches on the output format and
``read(path)`` on the file name's suffix (and, for ``.ply``, on the layout inside). The
formats, their suffixes, media types, options and default frames are one table,
:data:`mlsharp.formats.FORMATS` (see ``docs/formats.md``); the constants below are views of
it kept for callers of the earlier API.

Readers return :class:`~mlsharp.gaussians.Gaussians` in the model's OpenCV frame with
linear-RGB colours; depth files are read with the functions of :mod:`mlsharp.splat.depth`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlsharp import formats as registry
from mlsharp.errors import ConfigError
from mlsharp.formats import format_for_path
from mlsharp.gaussians import Gaussians
from mlsharp.splat.antisplat import read_splat, write_splat
from mlsharp.splat.common import FRAMES, Frame, SceneFormatError, check_frame
from mlsharp.splat.density import Density, reduce_density
from mlsharp.splat.depth import DepthUnavailable
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
    "Density",
    "DepthUnavailable",
    "Frame",
    "PlyFormatError",
    "SceneFormatError",
    "SplatFormat",
    "check_frame",
    "count",
    "format_for_path",
    "is_reference_layout",
    "parse_formats",
    "read",
    "read_ply",
    "read_ply_raw",
    "read_splat",
    "read_spz",
    "read_standard_ply",
    "reduce_density",
    "write",
    "write_ply",
    "write_splat",
    "write_spz",
    "write_standard_ply",
]

#: An output format name (one of :data:`FORMATS`).
SplatFormat = str

#: The available output formats, in registry order.
FORMATS: tuple[str, ...] = tuple(registry.FORMATS)
#: Formats that take a coordinate ``frame`` option, with their default frame.
FRAME_FORMATS: dict[str, Frame] = {
    s.name: s.frame  # type: ignore[misc]
    for s in registry.FORMATS.values()
    if s.takes_frame
}
#: Formats written from the scene's depth map (they need a prediction, not a file).
DEPTH_FORMATS: tuple[str, ...] = tuple(s.name for s in registry.FORMATS.values() if s.needs_depth)
#: File name suffix of each format (what follows the scene's stem).
SUFFIXES: dict[str, str] = {s.name: s.suffix for s in registry.FORMATS.values()}
#: HTTP media type of each format.
MEDIA_TYPES: dict[str, str] = {s.name: s.media_type for s in registry.FORMATS.values()}


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
        **options: format options (:attr:`FormatSpec.options`), e.g. ``frame="opengl"``
            for ``ply-standard``, ``splat``, ``spz`` and ``sog``, ``version=4`` for ``spz``.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``format`` is unknown, or takes no such option / value.
        DepthUnavailable: a depth format for a scene without a depth map.
    """
    spec = registry.get(format)
    extra = sorted(set(options) - spec.options)
    if extra:
        raise ConfigError(f"format {format!r} takes no option {extra[0]!r}")
    return registry.resolve(spec.writer)(gaussians, dest, **options)


def parse_formats(raw: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"ply,spz,depth"`` -> known format names in order, duplicates dropped, the command
    line's aliases expanded (``depth`` -> the PNG, ``.npy`` and preview).

    Raises:
        ConfigError: a name is unknown, or none is given.
    """
    return registry.parse_formats(raw, (), expand=True)


def count(path: str | os.PathLike[str], format: str | None = None) -> int:
    """The number of splats in a scene file, read from its header (not the whole file).

    Raises:
        ConfigError: the format holds no splats.
        PlyFormatError, SceneFormatError: the file is not readable in that format.
    """
    spec = registry.get(format or format_for_path(path))
    if spec.counter is None:
        raise ConfigError(f"{spec.name!r} files hold no splats")
    return int(registry.resolve(spec.counter)(path))


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
            layout and glTF (always y up) record their frame; asking for another is an error.

    Returns:
        The scene in the model's OpenCV frame, colours in linear RGB.

    Raises:
        ConfigError: the format is unknown or cannot be read back (depth maps), or
            ``frame`` contradicts a file that records its frame.
        PlyFormatError, SceneFormatError: the file is not readable in that format.
        OSError: the file cannot be opened.
    """
    spec = registry.get(format or format_for_path(path))
    if spec.name == "ply" and not is_reference_layout(path):
        spec = registry.get("ply-standard")  # plain 3DGS: sRGB DC and a frame comment, if any
    if spec.reader is None:
        readable = ", ".join(s.name for s in registry.FORMATS.values() if s.scene)
        raise ConfigError(
            f"{spec.name!r} files hold a depth map, not a scene (readable scenes: {readable})"
        )
    reader = registry.resolve(spec.reader)
    if frame is None:
        return reader(path)
    frame = check_frame(frame)
    if not spec.takes_frame:
        if frame != spec.frame:
            kind = "in ml-sharp's reference layout" if spec.name == "ply" else "a glTF file"
            raise ConfigError(
                f"{Path(path).name} is {kind}, which is always in the {spec.frame} frame "
                f"({'the model' if spec.name == 'ply' else 'y up'}); it cannot be read as "
                f"{frame!r}"
            )
        return reader(path)
    return reader(path, frame=frame)
