"""The output formats: one :class:`FormatSpec` per format, the one table everything reads.

``mlsharp predict --format`` (its choices and ``--help``), ``mlsharp convert`` (formats by
suffix), :func:`mlsharp.splat.write` / :func:`mlsharp.splat.read`, the service's
``formats=`` and ``?format=`` checks, ``GET /v1/info`` (and through it the web page) and the
table in ``docs/formats.md`` are all built from :data:`FORMATS`. Adding an output format is
one entry here plus its writer (and reader) module.

This module imports neither NumPy nor the writers: writers, readers and splat counters are
named as ``"module:function"`` and imported on first use, so ``mlsharp --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlsharp.choices import FRAME_CHOICES
from mlsharp.errors import ConfigError

__all__ = [
    "FORMATS",
    "FRAMES",
    "GLB_COMPRESSIONS",
    "SPZ_VERSIONS",
    "FormatSpec",
    "format_for_path",
    "formats_help",
    "get",
    "markdown_table",
    "parse_formats",
    "resolve",
]

#: Coordinate frames a scene file can be stored in (defined in :mod:`mlsharp.choices`).
FRAMES: tuple[str, ...] = FRAME_CHOICES
#: The SPZ versions the ``spz`` writer produces (``version=``, ``--spz-version``).
SPZ_VERSIONS: tuple[int, ...] = (2, 3, 4)
#: How the ``glb`` writer stores the splats (``compression=``, ``--glb-compression``).
GLB_COMPRESSIONS: tuple[str, ...] = ("none", "spz")


@dataclass(frozen=True)
class FormatSpec:
    """Everything mlsharp knows about one output format.

    Attributes:
        name: the format's name (``--format``, ``formats=``, ``?format=``).
        suffix: what follows the scene's stem in its file name (``.standard.ply``).
        media_type: the HTTP ``Content-Type`` of a download.
        summary: one line for ``--help``, ``/v1/info`` and the docs.
        writer: ``"module:function"`` writing ``(gaussians, dest, **options)``.
        reader: ``"module:function"`` reading ``(path[, frame=])`` back into Gaussians
            (``None``: not a scene, e.g. a depth map).
        counter: ``"module:function"`` giving a file's splat count from its header alone.
        options: keyword options the writer accepts.
        frame: the coordinate frame the file is in by default (``None``: not a scene).
        takes_frame: the writer takes ``frame=`` (and the reader does, for files that do
            not record it).
        needs_depth: written from the prediction's depth map, not from the splats.
        viewer: the web page's viewer (Spark) reads it.
        bytes_per_splat: typical bytes per splat of a SHARP scene (measured, see
            docs/formats.md); how the page picks the smallest format to download.
        expands_to: what the name asks ``mlsharp predict --format`` for (``depth`` is the
            PNG, its exact ``.npy`` and a preview); the service keeps one file per name.
    """

    name: str
    suffix: str
    media_type: str
    summary: str
    writer: str
    reader: str | None = None
    counter: str | None = None
    options: frozenset[str] = field(default_factory=frozenset)
    frame: str | None = "opencv"
    takes_frame: bool = False
    needs_depth: bool = False
    viewer: bool = False
    bytes_per_splat: float | None = None
    expands_to: tuple[str, ...] = ()

    @property
    def scene(self) -> bool:
        """Whether the file holds splats (and can be read back as a scene)."""
        return self.reader is not None


_SPLAT = "mlsharp.splat"

#: Every output format, in the order ``--help`` and ``/v1/info`` list them.
FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name="ply",
            suffix=".ply",
            media_type="application/x-ply",
            summary="Apple ml-sharp's reference layout (default)",
            writer=f"{_SPLAT}.ply:write_ply",
            reader=f"{_SPLAT}.ply:read_ply",
            counter=f"{_SPLAT}.ply:count_ply",
            viewer=True,
            bytes_per_splat=56.0,
        ),
        FormatSpec(
            name="ply-standard",
            suffix=".standard.ply",
            media_type="application/x-ply",
            summary="viewer-safe 3DGS PLY",
            writer=f"{_SPLAT}.standard_ply:write_standard_ply",
            reader=f"{_SPLAT}.standard_ply:read_standard_ply",
            counter=f"{_SPLAT}.ply:count_ply",
            options=frozenset({"frame", "layout"}),
            takes_frame=True,
            viewer=True,
            bytes_per_splat=56.0,
        ),
        FormatSpec(
            name="splat",
            suffix=".splat",
            media_type="application/octet-stream",
            summary="antimatter15's 32-byte records",
            writer=f"{_SPLAT}.antisplat:write_splat",
            reader=f"{_SPLAT}.antisplat:read_splat",
            counter=f"{_SPLAT}.antisplat:count_splat",
            options=frozenset({"frame"}),
            takes_frame=True,
            viewer=True,
            bytes_per_splat=32.0,
        ),
        FormatSpec(
            name="spz",
            suffix=".spz",
            media_type="application/octet-stream",
            summary="Niantic SPZ (version 2 gzip by default; 3, or 4 with zstd)",
            writer=f"{_SPLAT}.spz:write_spz",
            reader=f"{_SPLAT}.spz:read_spz",
            counter=f"{_SPLAT}.spz:count_spz",
            options=frozenset({"frame", "version"}),
            frame="opengl",
            takes_frame=True,
            viewer=True,  # versions 1-3 (the page's server writes 2); Spark reads no 4
            bytes_per_splat=11.6,
        ),
        FormatSpec(
            name="sog",
            suffix=".sog",
            media_type="application/zip",
            summary="PlayCanvas SOG: lossless WebP images + meta.json in a zip",
            writer=f"{_SPLAT}.sog:write_sog",
            reader=f"{_SPLAT}.sog:read_sog",
            counter=f"{_SPLAT}.sog:count_sog",
            options=frozenset({"frame"}),
            takes_frame=True,
            viewer=True,
            bytes_per_splat=10.5,
        ),
        FormatSpec(
            name="glb",
            suffix=".glb",
            media_type="model/gltf-binary",
            summary="glTF 2.0 binary with KHR_gaussian_splatting (y up, the photo's camera)",
            writer=f"{_SPLAT}.gltf:write_glb",
            reader=f"{_SPLAT}.gltf:read_glb",
            counter=f"{_SPLAT}.gltf:count_glb",
            options=frozenset({"compression"}),
            frame="opengl",
            bytes_per_splat=60.0,
        ),
        FormatSpec(
            name="depth",
            suffix=".depth.png",
            media_type="image/png",
            summary="16-bit depth PNG, scale in metadata (needs a prediction)",
            writer=f"{_SPLAT}.depth:write_depth_png",
            frame=None,
            needs_depth=True,
            expands_to=("depth", "depth-npy", "depth-preview"),
        ),
        FormatSpec(
            name="depth-npy",
            suffix=".depth.npy",
            media_type="application/octet-stream",
            summary="float32 metric depth (needs a prediction)",
            writer=f"{_SPLAT}.depth:write_depth_npy",
            frame=None,
            needs_depth=True,
        ),
        FormatSpec(
            name="depth-preview",
            suffix=".depth.preview.png",
            media_type="image/png",
            summary="coloured depth picture (needs a prediction)",
            writer=f"{_SPLAT}.depth:write_depth_preview",
            frame=None,
            needs_depth=True,
        ),
    )
}


def _known() -> str:
    return ", ".join(FORMATS)


def get(name: str) -> FormatSpec:
    """The spec of format ``name``.

    Raises:
        ConfigError: no format has that name.
    """
    spec = FORMATS.get(name)
    if spec is None:
        raise ConfigError(f"unknown output format {name!r} (choose from: {_known()})")
    return spec


def parse_formats(
    raw: str | Iterable[str] | None,
    default: Iterable[str] = ("ply",),
    *,
    expand: bool = False,
) -> tuple[str, ...]:
    """``"ply,SPZ, sog"`` -> ``("ply", "spz", "sog")``: known names in order, no duplicates.

    Args:
        raw: comma-separated names (or a sequence of names); empty or ``None`` means
            ``default``.
        default: the names to use when ``raw`` names none.
        expand: expand the command line's aliases (``depth`` -> PNG, ``.npy``, preview).

    Raises:
        ConfigError: a name is unknown, or no name results.
    """
    parts = raw.split(",") if isinstance(raw, str) else list(raw or ())
    names = [part.strip().lower() for part in parts if part and part.strip()]
    if not names:
        names = list(default)
    result: list[str] = []
    for name in names:
        spec = get(name)
        result.extend(spec.expands_to if expand and spec.expands_to else (name,))
    if not result:
        raise ConfigError(f"no output format given (choose from: {_known()})")
    return tuple(dict.fromkeys(result))


def format_for_path(path: str | os.PathLike[str]) -> str:
    """The format a file name implies by its suffix (the longest matching suffix wins).

    Raises:
        ConfigError: no format uses that suffix.
    """
    name = Path(path).name.lower()
    matches = [spec for spec in FORMATS.values() if name.endswith(spec.suffix)]
    if not matches:
        known = ", ".join(sorted({spec.suffix for spec in FORMATS.values()}))
        raise ConfigError(f"cannot tell the format of {name!r} from its suffix (known: {known})")
    return max(matches, key=lambda spec: len(spec.suffix)).name


def resolve(reference: str) -> Callable[..., Any]:
    """Import the function a spec names as ``"module:function"``."""
    module, _, function = reference.partition(":")
    found: Callable[..., Any] = getattr(importlib.import_module(module), function)
    return found


def formats_help() -> str:
    """The ``--format`` help text: every name with its one-line summary."""
    entries = []
    for spec in FORMATS.values():
        what = spec.summary
        if spec.expands_to:
            what += f", with {' and '.join(spec.expands_to[1:])} on the command line"
        entries.append(f"{spec.name}: {what}")
    return "output formats, comma-separated. " + "; ".join(entries)


def markdown_table() -> str:
    """The formats table of ``docs/formats.md`` (a test keeps the two in sync)."""
    rows = [
        "| format (`--format`, `?format=`) | file | media type | what it is |",
        "|---|---|---|---|",
    ]
    for spec in FORMATS.values():
        rows.append(
            f"| `{spec.name}` | `<stem>{spec.suffix}` | `{spec.media_type}` | {spec.summary} |"
        )
    return "\n".join(rows)
