"""The ``.splat`` format of antimatter15's WebGL viewer (read by Spark, GaussianSplats3D, ...).

No header: N records of 32 bytes, little endian::

    offset  size  field
         0    12  position x, y, z       float32
        12    12  scale x, y, z          float32, linear (not log)
        24     4  colour R, G, B, A      uint8: sRGB * 255, A = opacity * 255
        28     4  rotation w, x, y, z    uint8: round(q * 128 + 128) clipped to 0..255,
                                         q the normalised quaternion

This is the layout of antimatter15/splat's ``convert.py`` and of the readers in Spark
(``antisplat.ts``, decoding ``(byte - 128) / 128``) and GaussianSplats3D, with two choices
of ours: colour and rotation bytes are rounded to the nearest value (``convert.py``
truncates), and records are sorted by ``scale_x * scale_y * scale_z * opacity`` descending
like ``convert.py`` (large, opaque splats first, which progressive loaders show first).
The format has no metadata: the frame is the writer's ``frame`` option (default
``opencv``, the 3DGS convention of .splat files) and the reader's ``frame`` argument.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mlsharp._atomic import atomic_write
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import (
    DEFAULT_FOCAL_PX,
    DEFAULT_IMAGE_SIZE,
    Frame,
    SceneFormatError,
    change_frame,
    check_frame,
    from_srgb,
    normalized_quaternions,
    srgb_colors,
)

__all__ = ["SPLAT_DTYPE", "count_splat", "read_splat", "splat_records", "write_splat"]

#: One 32-byte record.
SPLAT_DTYPE = np.dtype(
    [("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))]
)
assert SPLAT_DTYPE.itemsize == 32


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def splat_records(gaussians: Gaussians, *, frame: Frame = "opencv") -> np.ndarray:
    """Encode ``gaussians`` as an (N,) array of :data:`SPLAT_DTYPE` records, sorted."""
    frame = check_frame(frame)
    positions, rotations = change_frame(
        gaussians.positions, normalized_quaternions(gaussians.rotations), "opencv", frame
    )
    scales = np.asarray(gaussians.scales, dtype=np.float32)
    opacities = np.asarray(gaussians.opacities, dtype=np.float32)
    records = np.empty(len(gaussians), dtype=SPLAT_DTYPE)
    records["position"] = positions
    records["scale"] = scales
    records["rgba"][:, :3] = _to_u8(srgb_colors(gaussians).astype(np.float64) * 255.0)
    records["rgba"][:, 3] = _to_u8(opacities.astype(np.float64) * 255.0)
    records["rot"] = _to_u8(rotations.astype(np.float64) * 128.0 + 128.0)
    importance = np.prod(scales.astype(np.float64), axis=1) * opacities
    order = np.argsort(-importance, kind="stable")
    return records[order]


def write_splat(
    gaussians: Gaussians, dest: str | os.PathLike[str], *, frame: Frame = "opencv"
) -> Path:
    """Write ``gaussians`` as a 32-byte-per-splat ``.splat`` file in ``frame`` (atomic).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: unknown ``frame``.
    """
    return atomic_write(dest, (splat_records(gaussians, frame=frame),))


def count_splat(path: str | os.PathLike[str]) -> int:
    """The number of records of a ``.splat`` file (its size / 32).

    Raises:
        SceneFormatError: the size is not a multiple of 32 bytes.
    """
    size = Path(path).stat().st_size
    if size % SPLAT_DTYPE.itemsize:
        raise SceneFormatError(f"{path}: not a .splat file ({size} bytes is not a multiple of 32)")
    return size // SPLAT_DTYPE.itemsize


def read_splat(path: str | os.PathLike[str], *, frame: Frame = "opencv") -> Gaussians:
    """Read a ``.splat`` file stored in ``frame`` into model-frame Gaussians.

    Colours come back as linear RGB; opacities of byte 0 or 255 are kept half a step inside
    (0, 1) so they stay finite as logits. The file has no camera data: focal length and
    image size are the reference loader's defaults (512 px, 640x480).

    Raises:
        SceneFormatError: the size is not a multiple of 32 bytes, or a value is not finite.
    """
    path = Path(path)
    frame = check_frame(frame)
    data = path.read_bytes()
    if len(data) % SPLAT_DTYPE.itemsize:
        raise SceneFormatError(
            f"{path}: not a .splat file ({len(data)} bytes is not a multiple of 32)"
        )
    records = np.frombuffer(data, dtype=SPLAT_DTYPE)
    positions = records["position"].astype(np.float32)
    scales = records["scale"].astype(np.float32)
    if not (np.isfinite(positions).all() and np.isfinite(scales).all()):
        raise SceneFormatError(f"{path}: not a .splat file (non-finite positions or scales)")
    rotations = normalized_quaternions((records["rot"].astype(np.float32) - 128.0) / 128.0)
    positions, rotations = change_frame(positions, rotations, frame, "opencv")
    rgba = records["rgba"].astype(np.float32) / np.float32(255.0)
    opacities = np.clip(rgba[:, 3], 0.5 / 255.0, 1.0 - 0.5 / 255.0).astype(np.float32)
    return Gaussians(
        positions=positions,
        scales=scales,
        rotations=rotations,
        colors=from_srgb(rgba[:, :3]),
        opacities=opacities,
        focal_px=DEFAULT_FOCAL_PX,
        image_size=DEFAULT_IMAGE_SIZE,
        color_space="linearRGB",
        metadata={"source": str(path), "frame": frame},
    )
