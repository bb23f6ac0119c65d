"""PlayCanvas' SOG ("spatially ordered Gaussians"): lossless WebP images and ``meta.json``
in one zip, written with NumPy and Pillow.

Written from the format's specification (PlayCanvas developer site, "The SOG Format",
version 2) and the reader of @playcanvas/splat-transform. We write **version 2**: it is what
Spark 2 and splat-transform 3.10 read (PlayCanvas has since described a version 3, which
neither reads yet). A ``.sog`` file is a zip (images stored, ``meta.json`` deflated, fixed
timestamps) of:

``meta.json``
    ``{"version": 2, "count": N, "means": {"mins", "maxs", "files"}, "scales": {"codebook",
    "files"}, "quats": {"files"}, "sh0": {"codebook", "files"}, "mlsharp": {...}}``; the
    ``mlsharp`` entry (ignored by other readers) records the frame and the photo's camera.
``means_l.webp``, ``means_u.webp``
    per splat (one texel each, row-major from the top left, the image ``W x H`` with
    ``W = ceil(sqrt(N) / 4) * 4`` and ``H = ceil(N / W / 4) * 4``): the low and high bytes
    of a 16-bit position per axis, ``round(65535 * (t - min) / (max - min))`` of
    ``t = sign(v) * ln(1 + |v|)`` (so far splats lose precision gently); alpha 255.
``quats.webp``
    the rotation (w, x, y, z) as "smallest three": the three smaller components times
    ``sqrt(2)`` (the larger one made positive), ``round(255 * (q * 0.5 + 0.5))`` in R, G, B
    in (w, x, y, z) order without the largest, and ``252 + index of the largest`` in A.
``scales.webp``
    per axis an index into ``scales.codebook``: 256 natural-log scales (1-D k-means over
    all three axes).
``sh0.webp``
    per channel an index into ``sh0.codebook`` (256 DC coefficients, ``(sRGB - 0.5) /
    0.28209479``, 1-D k-means), and ``round(opacity * 255)`` in A.

Splats are stored in Morton (Z-curve) order of their positions, which keeps neighbours in
neighbouring texels and the images small; the order is part of the format ("spatially
ordered"), so a round trip returns the splats reordered. Frame: SOG stores the 3DGS PLY
convention (the model's OpenCV frame; PlayCanvas turns it 180 degrees about z to show it
upright), so ``frame="opencv"`` is the default.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mlsharp._atomic import atomic_write
from mlsharp._version import __version__
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import (
    DEFAULT_FOCAL_PX,
    DEFAULT_IMAGE_SIZE,
    FRAMES,
    Frame,
    SceneFormatError,
    change_frame,
    check_frame,
    check_read_count,
    from_srgb,
    normalized_quaternions,
    srgb_colors,
)
from mlsharp.splat.ply import SH_C0

__all__ = ["SOG_FILES", "count_sog", "read_sog", "sog_bytes", "write_sog"]

#: The images of a SOG file, in ``meta.json``'s order.
SOG_FILES = ("means_l.webp", "means_u.webp", "scales.webp", "quats.webp", "sh0.webp")
_SQRT2 = math.sqrt(2.0)
_CODEBOOK_SIZE = 256
_KMEANS_ROUNDS = 12
_KMEANS_SAMPLE = 1 << 18
_MIN_LOG_SCALE = math.log(1e-12)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# WebP limits images to 16383 x 16383 texels (~268 M splats).
_MAX_SIDE = 16383
# Bounds of what a reader accepts (a SOG's meta.json is a few kilobytes).
_MAX_META_BYTES = 1 << 20
# Splats a reader accepts per byte of the file. Ours take ~10 bytes per splat (the low
# position bytes are noise to WebP), but a WebP of one flat colour holds millions of texels
# in a few bytes: a count the file is far too small for is refused before decoding.
_MAX_SPLATS_PER_BYTE = 1
# DC coefficients beyond this give colours far outside [0, 1] (0.5 + 0.282 * 8 > 2): the
# codebook is fitted on clipped values, so infinities cannot turn it into NaN.
_MAX_ABS_DC = 8.0
# The largest natural log (of a position's ln(1 + |v|), of a scale) a file may hold: exp()
# of more does not fit a float32. The writer clips to it, the reader refuses more.
_MAX_LOG = 88.0
_WEBP_EFFORT = {"lossless": True, "exact": True, "method": 3, "quality": 50}


def image_size_for(count: int) -> tuple[int, int]:
    """Width and height of the images for ``count`` splats (multiples of 4)."""
    width = max(4, math.ceil(math.sqrt(count) / 4) * 4)
    height = max(4, math.ceil(count / width / 4) * 4)
    return width, height


def _log_transform(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def _morton_order(positions: np.ndarray) -> np.ndarray:
    """Indices sorting ``positions`` along a 3-D Z curve (10 bits per axis), stable."""
    finite = np.where(np.isfinite(positions), positions, 0.0)
    low, high = finite.min(axis=0), finite.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    cells = np.clip(((finite - low) / span * 1023.0).astype(np.int64), 0, 1023)
    code = np.zeros(len(positions), dtype=np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def _codebook(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 256-entry 1-D k-means codebook of ``values`` (ascending) and each value's index."""
    flat = values.reshape(-1)
    if not flat.size:
        return np.zeros(_CODEBOOK_SIZE), np.zeros(values.shape, dtype=np.uint8)
    # Fit on an evenly strided sample (deterministic, and fast at SHARP's 3.5 M values):
    # start from its quantiles, then refine with Lloyd steps; in one dimension the nearest
    # centroid is found with the midpoints between the sorted centroids.
    sample = flat[:: max(1, flat.size // _KMEANS_SAMPLE)]
    centroids = np.quantile(sample, np.linspace(0.0, 1.0, _CODEBOOK_SIZE))
    for _ in range(_KMEANS_ROUNDS):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2.0, sample)
        sums = np.bincount(labels, weights=sample, minlength=_CODEBOOK_SIZE)
        counts = np.bincount(labels, minlength=_CODEBOOK_SIZE)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        centroids = np.sort(centroids)
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2.0, flat)
    return centroids, labels.astype(np.uint8).reshape(values.shape)


def _pack_quats(wxyz: np.ndarray) -> np.ndarray:
    """(N, 4) unit quaternions -> (N, 4) bytes: smallest three and 252 + largest index."""
    magnitudes = np.abs(wxyz)
    largest = np.argmax(magnitudes, axis=1)
    rows = np.arange(len(wxyz))
    signs = np.where(wxyz[rows, largest] < 0, -1.0, 1.0) * _SQRT2
    scaled = wxyz * signs[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    three = np.take_along_axis(scaled, others, axis=1)
    packed = np.empty((len(wxyz), 4), dtype=np.uint8)
    packed[:, :3] = np.clip(np.rint(255.0 * (three * 0.5 + 0.5)), 0, 255)
    packed[:, 3] = 252 + largest
    return packed


def _webp(texels: np.ndarray, width: int, height: int) -> bytes:
    """Lossless WebP of (N, 4) RGBA texels laid out row-major in a ``width x height`` image."""
    from PIL import Image

    image = np.zeros((width * height, 4), dtype=np.uint8)
    image[: len(texels)] = texels
    buffer = io.BytesIO()
    # exact: keep the RGB of texels whose alpha (an opacity) is 0, which WebP drops by default.
    Image.fromarray(image.reshape(height, width, 4), "RGBA").save(buffer, "WEBP", **_WEBP_EFFORT)
    return buffer.getvalue()


def _images(gaussians: Gaussians, frame: Frame) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The ``meta.json`` entries and the WebP images of ``gaussians`` stored in ``frame``."""
    n = len(gaussians)
    width, height = image_size_for(n)
    if width > _MAX_SIDE or height > _MAX_SIDE:
        raise ValueError(f"{n} splats do not fit SOG's 16383 x 16383 images")
    positions, rotations = change_frame(
        gaussians.positions, normalized_quaternions(gaussians.rotations), "opencv", frame
    )
    order = _morton_order(positions.astype(np.float64)) if n else np.arange(0)
    t = _log_transform(np.nan_to_num(positions[order].astype(np.float64)))
    t = np.clip(t, -_MAX_LOG, _MAX_LOG)
    mins = t.min(axis=0) if n else np.zeros(3)
    maxs = t.max(axis=0) if n else np.zeros(3)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    means = np.rint(65535.0 * (t - mins) / span).astype(np.uint16)
    opaque = np.full((n, 1), 255, dtype=np.uint8)
    with np.errstate(divide="ignore"):
        log_scales = np.log(np.abs(np.asarray(gaussians.scales, dtype=np.float64)[order]))
    log_scales = np.clip(np.nan_to_num(log_scales, nan=_MIN_LOG_SCALE), _MIN_LOG_SCALE, 50.0)
    scale_book, scale_labels = _codebook(log_scales)
    f_dc = (srgb_colors(gaussians)[order].astype(np.float64) - 0.5) / SH_C0
    color_book, color_labels = _codebook(np.clip(np.nan_to_num(f_dc), -_MAX_ABS_DC, _MAX_ABS_DC))
    alpha = np.rint(np.clip(np.asarray(gaussians.opacities, dtype=np.float64)[order], 0, 1) * 255)
    images = {
        "means_l.webp": np.concatenate([(means & 0xFF).astype(np.uint8), opaque], axis=1),
        "means_u.webp": np.concatenate([(means >> 8).astype(np.uint8), opaque], axis=1),
        "scales.webp": np.concatenate([scale_labels, opaque], axis=1),
        "quats.webp": _pack_quats(rotations[order].astype(np.float64)),
        "sh0.webp": np.concatenate([color_labels, alpha.astype(np.uint8)[:, None]], axis=1),
    }
    meta = {
        "version": 2,
        "asset": {"generator": f"mlsharp {__version__}"},
        "count": n,
        "means": {
            "mins": [float(v) for v in mins],
            "maxs": [float(v) for v in maxs],
            "files": ["means_l.webp", "means_u.webp"],
        },
        "scales": {"codebook": [float(v) for v in scale_book], "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": [float(v) for v in color_book], "files": ["sh0.webp"]},
        "mlsharp": {
            "frame": frame,
            "focal_px": float(gaussians.focal_px),
            "image_size": [int(v) for v in gaussians.image_size],
        },
    }
    return meta, {name: _webp(texels, width, height) for name, texels in images.items()}


def sog_bytes(gaussians: Gaussians, *, frame: Frame = "opencv") -> bytes:
    """The bytes of a ``.sog`` file of ``gaussians`` (deterministic for a given scene)."""
    meta, images = _images(gaussians, check_frame(frame))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        entries = {"meta.json": json.dumps(meta, separators=(",", ":")).encode(), **images}
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".json") else 0
            archive.writestr(info, data)
    return buffer.getvalue()


def write_sog(
    gaussians: Gaussians, dest: str | os.PathLike[str], *, frame: Frame = "opencv"
) -> Path:
    """Write ``gaussians`` as a bundled ``.sog`` (zip) in ``frame`` (atomic write).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: unknown ``frame``.
    """
    return atomic_write(dest, (sog_bytes(gaussians, frame=frame),))


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _fail(path: Path, reason: str) -> SceneFormatError:
    return SceneFormatError(f"{path}: not a readable .sog file ({reason})")


def _open_meta(path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
    try:
        info = archive.getinfo("meta.json")
    except KeyError:
        raise _fail(path, "no meta.json") from None
    if info.file_size > _MAX_META_BYTES:
        raise _fail(path, "meta.json is too large")
    try:
        meta = json.loads(archive.read(info))
    except (ValueError, RecursionError, zipfile.BadZipFile, OSError):  # deep nesting: Recursion
        raise _fail(path, "meta.json is not JSON") from None
    if not isinstance(meta, dict):
        raise _fail(path, "meta.json is not an object")
    if meta.get("version") != 2:
        raise _fail(path, f"SOG version {meta.get('version')!r} (readable: 2)")
    count = meta.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _MAX_SIDE**2:
        raise _fail(path, "meta.json has no valid count")
    check_read_count(count, path, "meta.json")
    if count > _MAX_SPLATS_PER_BYTE * path.stat().st_size:
        raise _fail(path, f"meta.json claims {count:,} splats, more than the file can hold")
    return meta


def _image(path: Path, archive: zipfile.ZipFile, name: object, count: int) -> np.ndarray:
    """The first ``count`` texels of a WebP entry as (count, 4) bytes."""
    from PIL import Image

    width, height = image_size_for(count)
    if not isinstance(name, str):
        raise _fail(path, "meta.json names no image")
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise _fail(path, f"{name} is missing") from None
    # A lossless WebP of N texels is far smaller than 8 bytes each plus headers.
    if info.file_size > 8 * width * height + (1 << 20):
        raise _fail(path, f"{name} is too large for {count} splats")
    try:
        with Image.open(io.BytesIO(archive.read(info)), formats=["WEBP"]) as image:
            if image.size[0] * image.size[1] < count or max(image.size) > _MAX_SIDE:
                raise _fail(path, f"{name} is {image.size[0]}x{image.size[1]}, too small")
            if image.size[0] * image.size[1] > 4 * width * height:
                raise _fail(path, f"{name} is far larger than {count} splats need")
            texels = np.asarray(image.convert("RGBA")).reshape(-1, 4)
    except SceneFormatError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, Image.DecompressionBombError):
        raise _fail(path, f"{name} is not a readable WebP image") from None
    return texels[:count]


def _codebook_of(path: Path, section: object) -> np.ndarray:
    book = (section or {}).get("codebook") if isinstance(section, dict) else None
    if not isinstance(book, list) or len(book) != _CODEBOOK_SIZE:
        raise _fail(path, "a codebook is missing or not 256 numbers")
    values = np.asarray([v if isinstance(v, int | float) else np.nan for v in book], dtype=float)
    if not np.isfinite(values).all():
        raise _fail(path, "a codebook holds non-numbers")
    return values


def _files(meta: dict[str, Any], key: str, count: int) -> list[Any]:
    section = meta.get(key)
    files = section.get("files") if isinstance(section, dict) else None
    return files if isinstance(files, list) and len(files) >= count else [None] * count


def _unpack_quats(texels: np.ndarray) -> np.ndarray:
    """(N, 4) bytes -> (N, 4) quaternions (w, x, y, z); unknown tags become the identity."""
    tag = texels[:, 3].astype(np.int64)
    largest = np.clip(tag - 252, 0, 3)
    three = (texels[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / _SQRT2
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    wxyz = np.zeros((len(texels), 4))
    np.put_along_axis(wxyz, others, three, axis=1)
    rest = np.sqrt(np.maximum(0.0, 1.0 - np.sum(three**2, axis=1)))
    wxyz[np.arange(len(texels)), largest] = rest
    wxyz[tag < 252] = [1.0, 0.0, 0.0, 0.0]
    return wxyz


def _camera(meta: dict[str, Any]) -> tuple[Frame | None, float, tuple[int, int]]:
    found = meta.get("mlsharp")
    ours: dict[str, Any] = found if isinstance(found, dict) else {}
    frame = ours.get("frame") if ours.get("frame") in FRAMES else None
    focal, size = ours.get("focal_px"), ours.get("image_size")
    if not (isinstance(focal, int | float) and math.isfinite(focal) and focal > 0):
        return frame, DEFAULT_FOCAL_PX, DEFAULT_IMAGE_SIZE
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and 0 < v < 2**31 for v in size)
    ):
        return frame, DEFAULT_FOCAL_PX, DEFAULT_IMAGE_SIZE
    return frame, float(focal), (size[0], size[1])


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError):
        raise _fail(path, "not a zip archive") from None


def count_sog(path: str | os.PathLike[str]) -> int:
    """The number of splats of a ``.sog`` (``count`` in its ``meta.json``)."""
    path = Path(path)
    with _open(path) as archive:
        return int(_open_meta(path, archive)["count"])


def read_sog(path: str | os.PathLike[str], *, frame: Frame | None = None) -> Gaussians:
    """Read a bundled ``.sog`` (version 2) into model-frame Gaussians (in Morton order).

    The frame is the one our ``meta.json`` entry records, else ``frame``, else ``opencv``
    (the format's convention); an explicit ``frame`` wins. The camera comes from that entry,
    else the reference loader's defaults. Colours come back as linear RGB.

    Raises:
        SceneFormatError: not a zip, no or a bad ``meta.json``, images missing or unreadable.
    """
    path = Path(path)
    with _open(path) as archive:
        meta = _open_meta(path, archive)
        n = meta["count"]
        lo, hi = (_image(path, archive, name, n) for name in _files(meta, "means", 2)[:2])
        (scales,) = (_image(path, archive, name, n) for name in _files(meta, "scales", 1)[:1])
        (quats,) = (_image(path, archive, name, n) for name in _files(meta, "quats", 1)[:1])
        (sh0,) = (_image(path, archive, name, n) for name in _files(meta, "sh0", 1)[:1])
    found = meta.get("means")
    means: dict[str, Any] = found if isinstance(found, dict) else {}
    try:
        mins = np.asarray(means.get("mins"), dtype=np.float64).reshape(3)
        maxs = np.asarray(means.get("maxs"), dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise _fail(path, "means has no mins/maxs") from None
    if not (np.abs(mins).max() <= _MAX_LOG and np.abs(maxs).max() <= _MAX_LOG):
        raise _fail(path, "means has non-finite or out-of-range bounds")
    fraction = (lo[:, :3].astype(np.float64) + 256.0 * hi[:, :3]) / 65535.0
    t = mins + (maxs - mins) * fraction
    positions = np.sign(t) * np.expm1(np.abs(t))
    scale_book = _codebook_of(path, meta.get("scales"))
    if np.abs(scale_book).max() > _MAX_LOG:
        raise _fail(path, "the scales codebook is out of range")
    color_book = _codebook_of(path, meta.get("sh0"))
    stored_frame, focal_px, image_size = _camera(meta)
    stored: Frame = check_frame(frame) if frame is not None else (stored_frame or "opencv")
    positions, rotations = change_frame(
        positions, normalized_quaternions(_unpack_quats(quats)), stored, "opencv"
    )
    srgb = 0.5 + SH_C0 * color_book[sh0[:, :3]]
    return Gaussians(
        positions=positions,
        scales=np.exp(scale_book[scales[:, :3]]).astype(np.float32),
        rotations=rotations,
        colors=from_srgb(srgb.astype(np.float32)),
        opacities=np.clip(sh0[:, 3] / 255.0, 0.5 / 255.0, 1.0 - 0.5 / 255.0).astype(np.float32),
        focal_px=focal_px,
        image_size=image_size,
        color_space="linearRGB",
        metadata={"source": str(path), "frame": stored},
    )
