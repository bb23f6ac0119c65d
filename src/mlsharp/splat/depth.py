"""Depth-map exports of a prediction: 16-bit PNG, float32 ``.npy`` and a coloured preview.

The maps come from :attr:`Gaussians.depth` (metric depth of the photo, the same units as the
splats' z, at the photo's size), which only a prediction fills in: a scene read back from a
splat file has none, and writing a depth format then raises :class:`DepthUnavailable`.

``<stem>.depth.png`` (format ``depth``)
    16-bit greyscale PNG, ``depth_m = value * depth_scale``, value 0 = unknown. The scale is
    1 mm per unit (the common depth-PNG convention of Open3D, TUM RGB-D, ROS ``16UC1``)
    unless the farthest depth exceeds 65.535 m; then it is the smallest whole number of
    millimetres per unit that fits it. PNG ``tEXt`` chunks record ``depth_scale`` (metres
    per unit), ``depth_units`` (``m``), ``depth_encoding``, ``focal_px`` and ``image_size``.
    A 360° panorama's map is equirectangular and holds the distance from the centre along
    each direction (not z); its PNG says so in a ``projection`` chunk.
``<stem>.depth.npy`` (format ``depth-npy``)
    The exact float32 (H, W) depth in metres (NumPy ``.npy``).
``<stem>.depth.preview.png`` (format ``depth-preview``)
    8-bit RGB picture: inverse depth between its 2nd and 98th percentiles through the
    viridis colour map (near = yellow, far = purple; unknown = black).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from mlsharp._atomic import atomic_path
from mlsharp._version import __version__
from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import SceneFormatError

__all__ = [
    "DepthUnavailable",
    "depth_png_scale",
    "depth_to_preview",
    "read_depth_npy",
    "read_depth_png",
    "read_depth_preview",
    "write_depth_npy",
    "write_depth_png",
    "write_depth_preview",
]

_U16_MAX = 65535
_MM = 0.001

# Viridis (CC0, van der Walt & Smith) sampled at 10 equally spaced points; interpolating
# linearly between them stays within a few 8-bit steps of the full table.
_VIRIDIS_STOPS = np.array(
    [
        [0x44, 0x01, 0x54],
        [0x48, 0x28, 0x78],
        [0x3E, 0x4A, 0x89],
        [0x31, 0x68, 0x8E],
        [0x26, 0x82, 0x8E],
        [0x1F, 0x9E, 0x89],
        [0x35, 0xB7, 0x79],
        [0x6D, 0xCD, 0x59],
        [0xB4, 0xDE, 0x2C],
        [0xFD, 0xE7, 0x25],
    ],
    dtype=np.float64,
)


class DepthUnavailable(ConfigError):
    """The scene has no depth map (it was read from a file rather than predicted)."""

    code = "depth_unavailable"


def _require_depth(gaussians: Gaussians) -> np.ndarray:
    if gaussians.depth is None:
        raise DepthUnavailable(
            "this scene has no depth map: depth exports need a prediction from a photo "
            "(`mlsharp predict --format depth`), not a scene read back from a file"
        )
    return np.asarray(gaussians.depth, dtype=np.float32)


def depth_png_scale(depth: np.ndarray) -> float:
    """Metres per PNG unit for ``depth``: 1 mm, or whole millimetres so the farthest fits."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    farthest = float(valid.max()) if valid.size else 0.0
    if farthest <= _U16_MAX * _MM:
        return _MM
    return math.ceil(farthest / (_U16_MAX * _MM)) * _MM


def write_depth_png(gaussians: Gaussians, dest: str | os.PathLike[str]) -> Path:
    """Write the scene's depth as a 16-bit PNG with its scale in text chunks (atomic).

    Raises:
        DepthUnavailable: the scene has no depth map.
    """
    from PIL import Image, PngImagePlugin

    depth = _require_depth(gaussians)
    scale = depth_png_scale(depth)
    valid = np.isfinite(depth) & (depth > 0)
    with np.errstate(invalid="ignore"):
        units = np.clip(np.rint(np.where(valid, depth, 0.0) / scale), 1, _U16_MAX)
    values = np.where(valid, units, 0).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    width, height = (int(v) for v in gaussians.image_size)
    for key, value in (
        ("depth_scale", repr(scale)),
        ("depth_units", "m"),
        ("depth_encoding", "depth = value * depth_scale; value 0 = unknown"),
        ("focal_px", repr(float(gaussians.focal_px))),
        ("image_size", f"{width} {height}"),
        ("Software", f"mlsharp {__version__}"),
    ):
        info.add_text(key, value)
    if gaussians.metadata.get("panorama"):  # an equirectangular map of distances
        info.add_text("projection", "equirectangular; value = distance from the centre")
    with atomic_path(dest) as tmp:
        Image.fromarray(values).save(tmp, format="PNG", pnginfo=info)
    return Path(dest)


def read_depth_png(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, str]]:
    """Read a depth PNG written by :func:`write_depth_png`.

    Returns:
        The (H, W) float32 depth in metres (NaN where unknown) and the PNG's text chunks.

    Raises:
        SceneFormatError: not a 16-bit greyscale PNG with a ``depth_scale``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            text = dict(getattr(image, "text", {}) or {})
            if image.format != "PNG" or image.mode not in ("I;16", "I"):
                raise SceneFormatError(f"{path}: not a 16-bit depth PNG (mode {image.mode})")
            values = np.asarray(image).astype(np.float64)
    except (UnidentifiedImageError, OSError) as error:
        if isinstance(error, FileNotFoundError | IsADirectoryError | PermissionError):
            raise
        raise SceneFormatError(f"{path}: not a readable PNG") from None
    try:
        scale = float(text["depth_scale"])
    except (KeyError, ValueError):
        raise SceneFormatError(f"{path}: the PNG has no valid depth_scale text chunk") from None
    depth = np.where(values > 0, values * scale, np.nan).astype(np.float32)
    return depth, text


def write_depth_npy(gaussians: Gaussians, dest: str | os.PathLike[str]) -> Path:
    """Write the scene's float32 (H, W) metric depth as a NumPy ``.npy`` file (atomic).

    Raises:
        DepthUnavailable: the scene has no depth map.
    """
    depth = _require_depth(gaussians)
    # Through a file object: np.save on a path would append ".npy" to the temporary name.
    with atomic_path(dest) as tmp, open(tmp, "xb") as fh:
        np.save(fh, np.ascontiguousarray(depth, dtype="<f4"), allow_pickle=False)
    return Path(dest)


def read_depth_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a depth ``.npy`` (a 2-D float array, metres) as float32.

    Raises:
        SceneFormatError: not an ``.npy`` file holding a 2-D float array.
    """
    path = Path(path)
    try:
        depth = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise SceneFormatError(f"{path}: not a readable .npy depth map ({error})") from None
    if depth.ndim != 2 or depth.dtype.kind != "f":
        raise SceneFormatError(
            f"{path}: expected a 2-D float array, got {depth.dtype} {depth.shape}"
        )
    return depth.astype(np.float32)


def _viridis_lut() -> np.ndarray:
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS_STOPS))
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(x, stops, _VIRIDIS_STOPS[:, c]) for c in range(3)]
    return np.clip(np.rint(np.stack(channels, axis=1)), 0, 255).astype(np.uint8)


def depth_to_preview(depth: np.ndarray) -> np.ndarray:
    """Colour a depth map: (H, W) metres -> (H, W, 3) uint8, near bright, unknown black."""
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    rgb = np.zeros((*depth.shape, 3), dtype=np.uint8)
    if not valid.any():
        return rgb
    inverse = np.zeros_like(depth)
    inverse[valid] = 1.0 / depth[valid]
    low, high = np.percentile(inverse[valid], [2.0, 98.0])
    span = high - low if high > low else 1.0
    t = np.clip((inverse - low) / span, 0.0, 1.0)
    rgb[valid] = _viridis_lut()[np.rint(t[valid] * 255).astype(np.intp)]
    return rgb


def write_depth_preview(gaussians: Gaussians, dest: str | os.PathLike[str]) -> Path:
    """Write a colour picture of the scene's depth (8-bit RGB PNG, atomic).

    Raises:
        DepthUnavailable: the scene has no depth map.
    """
    from PIL import Image

    rgb = depth_to_preview(_require_depth(gaussians))
    with atomic_path(dest) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(dest)


def read_depth_preview(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a preview PNG back as an (H, W, 3) uint8 array.

    Raises:
        SceneFormatError: not a readable PNG.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise SceneFormatError(f"{path}: not a readable PNG") from None
