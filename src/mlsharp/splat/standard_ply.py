"""The viewer-safe ``.standard.ply``: only the standard 3DGS vertex properties.

What differs from the reference layout (:mod:`mlsharp.splat.ply`), and why:

* One element only, ``vertex``. The reference's seven supplementary elements (``extrinsic``,
  ``intrinsic``, ``image_size``, ``frame``, ``disparity``, ``color_space``, ``version``) are
  dropped: strict or hand-written parsers reject or mis-size files with extra elements.
  The camera data goes to header ``comment`` lines instead (part of the PLY standard and
  skipped by every parser), so mlsharp can read it back.
* A coordinate ``frame``: ``opencv`` (the model's frame, the 3DGS convention; default) or
  ``opengl`` (y up, camera looking down -z) for y-up viewers; see :mod:`mlsharp.splat.common`.
* Values a strict viewer would choke on are made finite: opacities are clamped to
  ``[1e-6, 1 - 1e-6]`` before the logit, scales to at least ``1e-12`` before the log, and
  quaternions are normalised (a zero quaternion becomes the identity).
* ``layout="inria"`` writes the full 62-float record of the original 3DGS code (``nx ny nz``
  and 45 ``f_rest_*``, all zero) for readers hard-wired to it; the default ``compact`` layout
  is the 14 properties every splat viewer reads.

The encodings are the reference's: ``f_dc = (sRGB - 0.5) / C0`` (generic viewers display
``0.5 + C0 * f_dc`` without any colour conversion, so the DC holds sRGB values), opacity as
a logit, scales as natural logs, rotations ``rot_0..3`` = (w, x, y, z).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np

from mlsharp._atomic import atomic_write
from mlsharp._version import __version__
from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import (
    DEFAULT_FOCAL_PX,
    DEFAULT_IMAGE_SIZE,
    FRAMES,
    Frame,
    change_frame,
    check_frame,
    from_srgb,
    normalized_quaternions,
    srgb_colors,
)
from mlsharp.splat.ply import (
    SH_C0,
    VERTEX_PROPERTIES,
    PlyFormatError,
    header_comments,
    is_panorama_file,
    read_ply_raw,
    scene_comments,
)

__all__ = ["STANDARD_PROPERTIES", "read_standard_ply", "standard_ply_header", "write_standard_ply"]

Layout = Literal["compact", "inria"]

#: The compact layout's vertex properties, in file order (all float32).
STANDARD_PROPERTIES: tuple[str, ...] = VERTEX_PROPERTIES  # the reference's own record

# The original 3DGS record: normals and 45 higher-order SH coefficients between f_dc and opacity.
_INRIA_PROPERTIES: tuple[str, ...] = (
    *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
    *(f"f_rest_{i}" for i in range(45)),
    *("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"),
)

_SH_C0_F32 = np.float32(SH_C0)
_MIN_OPACITY = 1e-6
_MIN_SCALE = 1e-12
_FRAME_WORDS = {
    "opencv": "x right, y down, z forward",
    "opengl": "x right, y up, z backward",
}
_CAMERA_RE = re.compile(r"^camera focal_px (\S+) image_size (\d+) (\d+)$")
_FRAME_RE = re.compile(r"^frame (\w+)\b")


def _properties(layout: str) -> tuple[str, ...]:
    if layout == "compact":
        return STANDARD_PROPERTIES
    if layout == "inria":
        return _INRIA_PROPERTIES
    raise ConfigError(f"unknown ply-standard layout {layout!r} (choose from: compact, inria)")


def standard_ply_header(
    num_vertices: int,
    *,
    frame: Frame = "opencv",
    focal_px: float = DEFAULT_FOCAL_PX,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    layout: Layout = "compact",
    comments: tuple[str, ...] | list[str] = (),
) -> bytes:
    """The ASCII header of a ``.standard.ply`` with ``num_vertices`` splats (``comments``:
    extra header comments, e.g. that the scene is a panorama)."""
    width, height = (int(v) for v in image_size)
    lines = [
        "ply",
        "format binary_little_endian 1.0",
        f"comment mlsharp {__version__} ply-standard",
        f"comment frame {frame} ({_FRAME_WORDS[frame]}; camera at the origin)",
        f"comment camera focal_px {float(focal_px)!r} image_size {width} {height}",
        "comment colors f_dc = (sRGB - 0.5) / 0.28209479",
        *(f"comment {comment}" for comment in comments),
        f"element vertex {int(num_vertices)}",
    ]
    lines += [f"property float {name}" for name in _properties(layout)]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def write_standard_ply(
    gaussians: Gaussians,
    dest: str | os.PathLike[str],
    *,
    frame: Frame = "opencv",
    layout: Layout = "compact",
) -> Path:
    """Write ``gaussians`` as a viewer-safe 3DGS ``.ply`` in ``frame`` (atomic write).

    Args:
        gaussians: the scene (model frame).
        dest: output path.
        frame: ``"opencv"`` (y down, the 3DGS convention) or ``"opengl"`` (y up).
        layout: ``"compact"`` (14 properties) or ``"inria"`` (62, zero normals and f_rest).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: unknown ``frame`` or ``layout``.
    """
    frame = check_frame(frame)
    names = _properties(layout)
    n = len(gaussians)
    positions, rotations = change_frame(
        gaussians.positions, normalized_quaternions(gaussians.rotations), "opencv", frame
    )
    opacities = np.clip(
        np.asarray(gaussians.opacities, dtype=np.float64), _MIN_OPACITY, 1.0 - _MIN_OPACITY
    )
    scales = np.maximum(np.asarray(gaussians.scales, dtype=np.float64), _MIN_SCALE)
    columns = {
        "x": positions[:, 0],
        "y": positions[:, 1],
        "z": positions[:, 2],
        "opacity": np.log(opacities / (1.0 - opacities)),
    }
    f_dc = (srgb_colors(gaussians) - np.float32(0.5)) / _SH_C0_F32
    log_scales = np.log(scales)
    for i in range(3):
        columns[f"f_dc_{i}"] = f_dc[:, i]
        columns[f"scale_{i}"] = log_scales[:, i]
    for i in range(4):
        columns[f"rot_{i}"] = rotations[:, i]
    # Normals and f_rest of the inria layout stay zero.
    records = np.zeros((n, len(names)), dtype="<f4")
    for index, name in enumerate(names):
        if name in columns:
            records[:, index] = columns[name]
    header = standard_ply_header(
        n,
        frame=frame,
        focal_px=gaussians.focal_px,
        image_size=gaussians.image_size,
        layout=layout,
        comments=scene_comments(gaussians),
    )
    return atomic_write(dest, (header, records))


def read_standard_ply(path: str | os.PathLike[str], *, frame: Frame | None = None) -> Gaussians:
    """Read a ``.standard.ply`` (or any plain 3DGS ``.ply``) back into model-frame Gaussians.

    Colours are taken as sRGB-encoded DC (converted to linear RGB). The frame is the one the
    file's ``comment frame`` line names, else ``frame``, else ``opencv`` (the 3DGS convention);
    an explicit ``frame`` wins over the comment. Focal length and image size come from the
    ``comment camera`` line, else the reference loader's defaults (512 px, 640x480).

    Raises:
        PlyFormatError: not a readable PLY, or the vertex element lacks a 3DGS property.
    """
    path = Path(path)
    raw = read_ply_raw(path)
    vertex = raw.get("vertex")
    if vertex is None:
        raise PlyFormatError(f"{path}: not a readable PLY splat file (no 'vertex' element)")
    missing = [p for p in STANDARD_PROPERTIES if p not in (vertex.dtype.names or ())]
    if missing:
        raise PlyFormatError(
            f"{path}: not a readable PLY splat file (vertex element lacks {', '.join(missing)})"
        )
    stored_frame: Frame = "opencv"
    focal_px, image_size = DEFAULT_FOCAL_PX, DEFAULT_IMAGE_SIZE
    comments = header_comments(path)
    for comment in comments:
        if (match := _FRAME_RE.match(comment)) and match.group(1) in FRAMES:
            stored_frame = match.group(1)  # type: ignore[assignment]
        elif match := _CAMERA_RE.match(comment):
            focal_px = float(match.group(1))
            image_size = (int(match.group(2)), int(match.group(3)))
    if frame is not None:
        stored_frame = check_frame(frame)

    def columns(*names: str) -> np.ndarray:
        return np.stack([vertex[name].astype(np.float32) for name in names], axis=1)

    positions, rotations = change_frame(
        columns("x", "y", "z"), columns("rot_0", "rot_1", "rot_2", "rot_3"), stored_frame, "opencv"
    )
    srgb = columns("f_dc_0", "f_dc_1", "f_dc_2") * _SH_C0_F32 + np.float32(0.5)
    with np.errstate(over="ignore"):
        opacities = 1.0 / (1.0 + np.exp(-vertex["opacity"].astype(np.float64)))
        scales = np.exp(columns("scale_0", "scale_1", "scale_2").astype(np.float64))
    return Gaussians(
        positions=positions,
        scales=scales.astype(np.float32),
        rotations=rotations,
        colors=from_srgb(srgb),
        opacities=opacities.astype(np.float32),
        focal_px=focal_px,
        image_size=image_size,
        color_space="linearRGB",
        metadata={"source": str(path), "frame": stored_frame}
        | ({"panorama": True} if is_panorama_file(comments) else {}),
    )
