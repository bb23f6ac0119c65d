"""Niantic's ``.spz`` compressed splat format, written in-house with NumPy and gzip.

Follows the published description (nianticlabs/spz: README "File Format" and
``src/cc/load-spz.cc``) of the gzip-compressed versions, which is what web viewers read:
Spark 2 reads versions 1-3, GaussianSplats3D 0.4 reads versions 1-2, Niantic's own library
reads 1-4 (4 is a newer zstd container nothing in the browser reads yet). We write
**version 2** by default (readable everywhere); ``version=3`` stores rotations as "smallest
three" (more precise; not readable by GaussianSplats3D).

The file is one gzip stream of::

    header (16 bytes, little endian)
        u32 magic 0x5053474E ("NGSP" in file order) | u32 version | u32 numPoints
        u8 shDegree (0) | u8 fractionalBits | u8 flags (0: not antialiased) | u8 reserved
    positions  numPoints x 3 x 24-bit signed fixed point, round(v * 2**fractionalBits),
               little endian. fractionalBits is 12 like the reference writer (1/4096 m
               steps, range +-2048 m) unless the scene is larger: then the largest value
               that still fits the farthest coordinate (every reader honours the field).
    alphas     numPoints x u8   round(opacity * 255)
    colors     numPoints x 3 u8 round(f_dc * 0.15 * 255 + 127.5), f_dc = (sRGB - 0.5) / C0
    scales     numPoints x 3 u8 round((ln(scale) + 10) * 16)
    rotations  v2: numPoints x 3 u8, round(q * 127.5 + 127.5) of (x, y, z) after normalising
               (x, y, z, w) and negating it when w < 0 (w = sqrt(1 - |xyz|^2) on read);
               v3: numPoints x u32, 2 bits index of the largest |component| of (x, y, z, w),
               then three 10-bit (sign, 9-bit magnitude of |q_i| / sqrt(1/2)) components
    (no spherical-harmonics bytes: SHARP predicts degree 0 only)

Every u8 is rounded to nearest and clipped to 0..255 like the reference ``toUint8``.

Frame: the format stores RUB (x right, y up, z back: the ``opengl`` frame), which Spark and
GaussianSplats3D display upright without any transform, so ``frame="opengl"`` is the
default and the writer converts from the model's OpenCV frame. ``frame="opencv"`` stores
the model frame as is (what PlayCanvas' splat-transform/SuperSplat assume for .spz files).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from mlsharp._atomic import atomic_write
from mlsharp.errors import ConfigError
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
from mlsharp.splat.ply import SH_C0

__all__ = [
    "SPZ_COLOR_SCALE",
    "SPZ_FRACTIONAL_BITS",
    "SPZ_MAGIC",
    "encode_spz",
    "fractional_bits_for",
    "read_spz",
    "write_spz",
]

#: ``"NGSP"`` read as a little-endian u32.
SPZ_MAGIC = 0x5053474E
#: Fixed-point fractional bits of positions (the reference writer's value; fewer for
#: scenes beyond +-2048 units, see :func:`fractional_bits_for`).
SPZ_FRACTIONAL_BITS = 12
_FIXED_MAX = 2**23 - 1
#: The reference's DC colour scale (``colorScale`` in splat-utils.h).
SPZ_COLOR_SCALE = 0.15

_HEADER = struct.Struct("<IIIBBBB")
_SQRT1_2 = np.sqrt(0.5)
_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}  # SH coefficients per channel for each degree
_GZIP_LEVEL = 6  # zlib's default, as the reference (Z_DEFAULT_COMPRESSION)
_MAX_DEFLATE_RATIO = 1100

SpzVersion = Literal[2, 3]


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def fractional_bits_for(positions: np.ndarray) -> int:
    """The most fractional bits (at most 12) with which every coordinate fits 24 bits."""
    finite = np.abs(positions[np.isfinite(positions)])
    farthest = float(finite.max()) if finite.size else 0.0
    bits = SPZ_FRACTIONAL_BITS
    while bits > 0 and round(farthest * (1 << bits)) > _FIXED_MAX:
        bits -= 1
    return bits


def _pack_positions(positions: np.ndarray, bits: int) -> np.ndarray:
    """(N, 3) metres -> (N * 9,) bytes of 24-bit little-endian fixed point."""
    fixed = np.rint(np.nan_to_num(positions.astype(np.float64)) * (1 << bits))
    # Only beyond ~8.4e6 units (or for infinities) can a value still overflow: clip it.
    fixed = np.clip(fixed, -_FIXED_MAX - 1, _FIXED_MAX).astype("<i4")
    return fixed.view(np.uint8).reshape(-1, 3, 4)[:, :, :3].reshape(-1)


def _pack_rotations_v2(xyzw: np.ndarray) -> np.ndarray:
    sign = np.where(xyzw[:, 3:4] < 0, -1.0, 1.0)
    return _to_u8(xyzw[:, :3] * sign * 127.5 + 127.5).reshape(-1)


def _pack_rotations_v3(xyzw: np.ndarray) -> np.ndarray:
    magnitudes = np.abs(xyzw)
    largest = np.argmax(magnitudes, axis=1)  # first maximum, like the reference's strict >
    rows = np.arange(len(xyzw))
    negate = xyzw[rows, largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        negbit = ((xyzw[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(
            (511.0 * (magnitudes[:, i] / _SQRT1_2) + 0.5).astype(np.uint32), np.uint32(511)
        )
        shifted = (comp << np.uint32(10)) | (negbit << np.uint32(9)) | mag
        comp = np.where(keep, shifted, comp)
    return comp.astype("<u4").view(np.uint8)


def encode_spz(gaussians: Gaussians, *, frame: Frame = "opengl", version: int = 2) -> bytes:
    """The uncompressed SPZ payload (header + attribute streams) of ``gaussians``."""
    frame = check_frame(frame)
    if version not in (2, 3):
        raise ConfigError(f"SPZ version {version!r} cannot be written (choose 2 or 3)")
    n = len(gaussians)
    if n >= 2**32:
        raise ValueError(f"{n} Gaussians do not fit SPZ's u32 point count")
    positions, rotations = change_frame(
        gaussians.positions, normalized_quaternions(gaussians.rotations), "opencv", frame
    )
    xyzw = rotations[:, [1, 2, 3, 0]].astype(np.float64)
    opacities = np.asarray(gaussians.opacities, dtype=np.float64)
    f_dc = (srgb_colors(gaussians).astype(np.float64) - 0.5) / SH_C0
    with np.errstate(divide="ignore"):  # scale 0 -> -inf -> byte 0
        log_scales = np.log(np.asarray(gaussians.scales, dtype=np.float64))
    bits = fractional_bits_for(positions)
    header = _HEADER.pack(SPZ_MAGIC, version, n, 0, bits, 0, 0)
    parts = (
        _pack_positions(positions, bits),
        _to_u8(opacities * 255.0),
        _to_u8(f_dc * (SPZ_COLOR_SCALE * 255.0) + 0.5 * 255.0).reshape(-1),
        _to_u8((log_scales + 10.0) * 16.0).reshape(-1),
        _pack_rotations_v2(xyzw) if version == 2 else _pack_rotations_v3(xyzw),
    )
    return header + b"".join(part.tobytes() for part in parts)


def write_spz(
    gaussians: Gaussians,
    dest: str | os.PathLike[str],
    *,
    frame: Frame = "opengl",
    version: SpzVersion = 2,
) -> Path:
    """Write ``gaussians`` as a gzip-compressed ``.spz`` (atomic write).

    Args:
        gaussians: the scene (model frame).
        dest: output path.
        frame: the stored frame; ``"opengl"`` (RUB, the format's convention) by default.
        version: 2 (default, widest support) or 3 (smallest-three rotations).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    payload = encode_spz(gaussians, frame=frame, version=version)
    # mtime=0: the same scene gives the same bytes.
    return atomic_write(dest, (gzip.compress(payload, compresslevel=_GZIP_LEVEL, mtime=0),))


def _unpack_rotations_v3(data: np.ndarray) -> np.ndarray:
    comp = data.view("<u4").astype(np.uint32)
    largest = (comp >> np.uint32(30)).astype(np.int64)
    xyzw = np.zeros((len(comp), 4), dtype=np.float64)
    rest = comp.copy()
    for i in (3, 2, 1, 0):
        keep = largest != i
        mag = (rest & np.uint32(511)).astype(np.float64)
        negative = ((rest >> np.uint32(9)) & np.uint32(1)).astype(bool)
        value = _SQRT1_2 * mag / 511.0
        xyzw[:, i] = np.where(keep, np.where(negative, -value, value), 0.0)
        rest = np.where(keep, rest >> np.uint32(10), rest)
    rows = np.arange(len(comp))
    xyzw[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyzw**2, axis=1)))
    return xyzw


def _read_payload(path: Path) -> tuple[tuple[int, ...], bytes]:
    """Decompress ``path``; return the header fields and the bytes after the header."""
    try:
        with gzip.open(path, "rb") as fh:
            head = fh.read(_HEADER.size)
            if len(head) < _HEADER.size:
                raise SceneFormatError(f"{path}: not an .spz file (too short)")
            fields = _HEADER.unpack(head)
            magic, version, count, sh_degree, _, _, _ = fields
            if magic != SPZ_MAGIC:
                raise SceneFormatError(f"{path}: not an .spz file (bad magic {magic:#010x})")
            if version not in (1, 2, 3):
                raise SceneFormatError(
                    f"{path}: SPZ version {version} is not supported (readable: 1, 2, 3)"
                )
            if sh_degree not in _SH_DIM:
                raise SceneFormatError(f"{path}: invalid SPZ SH degree {sh_degree}")
            per_point = (6 if version == 1 else 9) + 1 + 3 + 3 + (4 if version == 3 else 3)
            needed = count * (per_point + 3 * _SH_DIM[sh_degree])
            # Deflate cannot expand data more than ~1032:1: a larger claim is a corrupt (or
            # hostile) header, refused before anything is allocated for it.
            if needed > path.stat().st_size * _MAX_DEFLATE_RATIO:
                raise SceneFormatError(
                    f"{path}: .spz header claims {count} points, more than the file can hold"
                )
            body = fh.read(needed)
    except (OSError, EOFError, zlib.error) as error:
        if isinstance(error, FileNotFoundError | IsADirectoryError | PermissionError):
            raise
        if path.read_bytes()[:4] == b"NGSP":
            raise SceneFormatError(
                f"{path}: SPZ version 4 (zstd) is not supported (readable: 1, 2, 3)"
            ) from None
        raise SceneFormatError(f"{path}: not an .spz file (not a valid gzip stream)") from None
    if len(body) < needed:
        raise SceneFormatError(f"{path}: .spz data is truncated ({len(body)} of {needed} bytes)")
    return fields, body


def read_spz(path: str | os.PathLike[str], *, frame: Frame = "opengl") -> Gaussians:
    """Read a gzip ``.spz`` (versions 1-3) stored in ``frame`` into model-frame Gaussians.

    Higher-order spherical harmonics, if any, are ignored. Opacities of byte 0 or 255 are
    kept half a step inside (0, 1). The format has no camera data: focal length and image
    size are the reference loader's defaults (512 px, 640x480).

    Raises:
        SceneFormatError: not gzip, wrong magic, unsupported version, truncated.
    """
    path = Path(path)
    frame = check_frame(frame)
    (_, version, n, _, fractional_bits, _, _), body = _read_payload(path)
    data = np.frombuffer(body, dtype=np.uint8)
    offset = 0

    def take(size: int) -> np.ndarray:
        nonlocal offset
        chunk = data[offset : offset + size]
        offset += size
        return chunk

    if version == 1:
        positions = take(n * 6).view("<f2").astype(np.float32).reshape(n, 3)
    else:
        raw = take(n * 9).reshape(n * 3, 3).astype(np.int32)
        fixed = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        positions = (fixed.astype(np.float64) / (1 << fractional_bits)).reshape(n, 3)
    alphas = take(n).astype(np.float64) / 255.0
    colors = take(n * 3).astype(np.float64).reshape(n, 3)
    scales = np.exp(take(n * 3).astype(np.float64).reshape(n, 3) / 16.0 - 10.0)
    if version == 3:
        xyzw = _unpack_rotations_v3(take(n * 4))
    else:
        xyz = take(n * 3).astype(np.float64).reshape(n, 3) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz**2, axis=1)))
        xyzw = np.concatenate([xyz, w[:, None]], axis=1)
    rotations = normalized_quaternions(xyzw[:, [3, 0, 1, 2]])
    positions, rotations = change_frame(positions, rotations, frame, "opencv")
    srgb = 0.5 + SH_C0 * ((colors / 255.0 - 0.5) / SPZ_COLOR_SCALE)
    return Gaussians(
        positions=positions,
        scales=scales.astype(np.float32),
        rotations=rotations,
        colors=from_srgb(srgb.astype(np.float32)),
        opacities=np.clip(alphas, 0.5 / 255.0, 1.0 - 0.5 / 255.0).astype(np.float32),
        focal_px=DEFAULT_FOCAL_PX,
        image_size=DEFAULT_IMAGE_SIZE,
        color_space="linearRGB",
        metadata={"source": str(path), "frame": frame, "spz_version": version},
    )
