"""Niantic's ``.spz`` compressed splat format, written in-house with NumPy, gzip and zstd.

Follows the published description (nianticlabs/spz: README "File Format" and
``src/cc/load-spz.cc``). Readers differ in the versions they take: Spark 2 reads 1-3,
GaussianSplats3D 0.4 reads 1-2, PlayCanvas' splat-transform reads 2-4 and Niantic's own
library 1-4. We write **version 2** by default (readable everywhere); ``version=3`` stores
rotations as "smallest three" (more precise; not readable by GaussianSplats3D);
``version=4`` is the newer zstd container (what splat-transform writes; Spark cannot read
it). The reader takes all four.

Versions 1-3 are one gzip stream of::

    header (16 bytes, little endian)
        u32 magic 0x5053474E ("NGSP" in file order) | u32 version | u32 numPoints
        u8 shDegree (0) | u8 fractionalBits | u8 flags (0: not antialiased) | u8 reserved
    positions  numPoints x 3 x 24-bit signed fixed point, round(v * 2**fractionalBits),
               little endian (version 1: 3 x float16). fractionalBits is 12 like the
               reference writer (1/4096 m steps, range +-2048 m) unless the scene is
               larger: then the largest value that still fits the farthest coordinate
               (every reader honours the field), so splats kilometres away survive.
    alphas     numPoints x u8   round(opacity * 255)
    colors     numPoints x 3 u8 round(f_dc * 0.15 * 255 + 127.5), f_dc = (sRGB - 0.5) / C0
    scales     numPoints x 3 u8 round((ln(scale) + 10) * 16)
    rotations  v2: numPoints x 3 u8, round(q * 127.5 + 127.5) of (x, y, z) after normalising
               (x, y, z, w) and negating it when w < 0 (w = sqrt(1 - |xyz|^2) on read);
               v3: numPoints x u32, 2 bits index of the largest |component| of (x, y, z, w),
               then three 10-bit (sign, 9-bit magnitude of |q_i| / sqrt(1/2)) components
    (no spherical-harmonics bytes: SHARP predicts degree 0 only)

Version 4 is not compressed as a whole: a plaintext 32-byte header (magic, version 4,
numPoints, shDegree, fractionalBits, flags, u8 numStreams, u32 tocByteOffset = 32, 12 zero
bytes), a table of contents of numStreams x (u64 compressed size, u64 uncompressed size),
then one zstd frame per attribute stream in the order positions, alphas, colors, scales,
rotations (the v3 encodings; empty streams, such as degree-0 harmonics, are left out).

Every u8 is rounded to nearest and clipped to 0..255 like the reference ``toUint8``.

Frame: the format stores RUB (x right, y up, z back: the ``opengl`` frame), which Spark and
GaussianSplats3D display upright without any transform, so ``frame="opengl"`` is the
default and the writer converts from the model's OpenCV frame. ``frame="opencv"`` stores
the model frame as is (what PlayCanvas' splat-transform/SuperSplat assume for .spz files).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mlsharp._atomic import atomic_write
from mlsharp.errors import ConfigError
from mlsharp.formats import SPZ_VERSIONS
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import (
    DEFAULT_FOCAL_PX,
    DEFAULT_IMAGE_SIZE,
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

__all__ = [
    "SPZ_COLOR_SCALE",
    "SPZ_FRACTIONAL_BITS",
    "SPZ_MAGIC",
    "SPZ_VERSIONS",
    "count_spz",
    "decode_spz",
    "encode_spz",
    "fractional_bits_for",
    "read_spz",
    "spz_bytes",
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

SpzVersion = Literal[2, 3, 4]

_HEADER_V4 = struct.Struct("<IIIBBBBI12x")
_TOC_ENTRY = struct.Struct("<QQ")
_ZSTD_LEVEL = 12  # the reference writer's level
# The reference loader's sanity bound on a v4 header's point count for a file's size.
_MAX_ZSTD_RATIO = 1024
_MIN_BYTES_PER_POINT = 9
_MAX_STREAMS = 6


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


def _packed_streams(
    gaussians: Gaussians, frame: Frame, version: int
) -> tuple[int, list[np.ndarray]]:
    """The fractional bits and the attribute streams (positions, alphas, colours, scales,
    rotations) of ``gaussians`` stored in ``frame``."""
    positions, rotations = change_frame(
        gaussians.positions, normalized_quaternions(gaussians.rotations), "opencv", frame
    )
    xyzw = rotations[:, [1, 2, 3, 0]].astype(np.float64)
    opacities = np.asarray(gaussians.opacities, dtype=np.float64)
    f_dc = (srgb_colors(gaussians).astype(np.float64) - 0.5) / SH_C0
    with np.errstate(divide="ignore", invalid="ignore"):  # scale 0 -> -inf -> byte 0
        log_scales = np.log(np.asarray(gaussians.scales, dtype=np.float64))
    bits = fractional_bits_for(positions)
    return bits, [
        _pack_positions(positions, bits),
        _to_u8(opacities * 255.0),
        _to_u8(f_dc * (SPZ_COLOR_SCALE * 255.0) + 0.5 * 255.0).reshape(-1),
        _to_u8((log_scales + 10.0) * 16.0).reshape(-1),
        _pack_rotations_v2(xyzw) if version == 2 else _pack_rotations_v3(xyzw),
    ]


def _check_version(version: object) -> int:
    if not isinstance(version, int) or version not in SPZ_VERSIONS:
        raise ConfigError(
            f"SPZ version {version!r} cannot be written (choose from: "
            f"{', '.join(map(str, SPZ_VERSIONS))})"
        )
    return version


def encode_spz(gaussians: Gaussians, *, frame: Frame = "opengl", version: int = 2) -> bytes:
    """The uncompressed payload of a gzip ``.spz`` (version 2 or 3): header + streams."""
    frame = check_frame(frame)
    if _check_version(version) == 4:
        raise ConfigError("SPZ version 4 has no single payload; use spz_bytes")
    n = len(gaussians)
    if n >= 2**32:
        raise ValueError(f"{n} Gaussians do not fit SPZ's u32 point count")
    bits, streams = _packed_streams(gaussians, frame, version)
    header = _HEADER.pack(SPZ_MAGIC, version, n, 0, bits, 0, 0)
    return header + b"".join(stream.tobytes() for stream in streams)


def _zstd_container(n: int, bits: int, streams: list[np.ndarray]) -> bytes:
    """A version 4 file: plaintext header, table of contents, one zstd frame per stream."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    raw = [stream.tobytes() for stream in streams if stream.size]
    frames = [compressor.compress(chunk) for chunk in raw]
    header = _HEADER_V4.pack(SPZ_MAGIC, 4, n, 0, bits, 0, len(frames), _HEADER_V4.size)
    toc = b"".join(_TOC_ENTRY.pack(len(f), len(r)) for f, r in zip(frames, raw, strict=True))
    return header + toc + b"".join(frames)


def spz_bytes(gaussians: Gaussians, *, frame: Frame = "opengl", version: int = 2) -> bytes:
    """The bytes of a ``.spz`` file of ``gaussians`` (gzip for versions 2-3, zstd for 4)."""
    frame = check_frame(frame)
    if _check_version(version) != 4:
        payload = encode_spz(gaussians, frame=frame, version=version)
        # mtime=0: the same scene gives the same bytes.
        return gzip.compress(payload, compresslevel=_GZIP_LEVEL, mtime=0)
    n = len(gaussians)
    if n >= 2**32:
        raise ValueError(f"{n} Gaussians do not fit SPZ's u32 point count")
    bits, streams = _packed_streams(gaussians, frame, 4)
    return _zstd_container(n, bits, streams)


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
        version: 2 (default, widest support), 3 (smallest-three rotations) or 4 (zstd
            streams; read by splat-transform and Niantic's library, not by Spark).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: unknown ``frame`` or ``version``.
    """
    return atomic_write(dest, (spz_bytes(gaussians, frame=frame, version=version),))


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


@dataclass
class _Packed:
    """A ``.spz`` file's header fields and its attribute streams, still quantized."""

    version: int
    count: int
    fractional_bits: int
    positions: np.ndarray
    alphas: np.ndarray
    colors: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray


def _stream_sizes(version: int, n: int) -> list[int]:
    """Byte sizes of the positions, alphas, colours, scales and rotations streams."""
    return [n * (6 if version == 1 else 9), n, n * 3, n * 3, n * (4 if version >= 3 else 3)]


def _split(version: int, n: int, bits: int, streams: list[bytes]) -> _Packed:
    arrays = [np.frombuffer(chunk, dtype=np.uint8) for chunk in streams[:5]]
    return _Packed(version, n, bits, *arrays)


def _legacy_header(path: Path, head: bytes) -> tuple[int, int, int, int]:
    """(version, count, SH degree, fractional bits) of a gzip ``.spz``'s 16-byte header."""
    if len(head) < _HEADER.size:
        raise SceneFormatError(f"{path}: not an .spz file (too short)")
    magic, version, count, sh_degree, bits, _, _ = _HEADER.unpack(head)
    if magic != SPZ_MAGIC:
        raise SceneFormatError(f"{path}: not an .spz file (bad magic {magic:#010x})")
    if version not in (1, 2, 3):
        raise SceneFormatError(
            f"{path}: gzip SPZ version {version} is not supported (readable: 1, 2, 3, 4)"
        )
    if sh_degree not in _SH_DIM:
        raise SceneFormatError(f"{path}: invalid SPZ SH degree {sh_degree}")
    return version, count, sh_degree, bits


def _read_gzip(path: Path, data: bytes) -> _Packed:
    """Decompress a version 1-3 file (one gzip stream)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as fh:
            version, n, sh_degree, bits = _legacy_header(path, fh.read(_HEADER.size))
            sizes = _stream_sizes(version, n)
            needed = sum(sizes) + n * 3 * _SH_DIM[sh_degree]
            # Deflate cannot expand data more than ~1032:1: a larger claim is a corrupt (or
            # hostile) header, refused before anything is allocated for it.
            if needed > len(data) * _MAX_DEFLATE_RATIO:
                raise SceneFormatError(
                    f"{path}: .spz header claims {n} points, more than the file can hold"
                )
            check_read_count(n, path, ".spz header")
            body = fh.read(sum(sizes))
    except (OSError, EOFError, zlib.error):
        raise SceneFormatError(f"{path}: not an .spz file (not a valid gzip stream)") from None
    if len(body) < sum(sizes):
        raise SceneFormatError(
            f"{path}: .spz data is truncated ({len(body)} of {sum(sizes)} bytes)"
        )
    offsets = np.cumsum([0, *sizes])
    streams = [body[offsets[i] : offsets[i + 1]] for i in range(5)]
    return _split(version, n, bits, streams)


def _zstd_header(path: Path, data: bytes) -> tuple[int, int, int, int, int]:
    """(count, SH degree, fractional bits, stream count, TOC offset) of a version 4 file."""
    if len(data) < _HEADER_V4.size:
        raise SceneFormatError(f"{path}: not an .spz file (too short)")
    _, version, n, sh_degree, bits, _, streams, toc = _HEADER_V4.unpack_from(data)
    if version != 4:
        raise SceneFormatError(
            f"{path}: SPZ version {version} is not supported (readable: 1, 2, 3, 4)"
        )
    if sh_degree not in _SH_DIM:
        raise SceneFormatError(f"{path}: invalid SPZ SH degree {sh_degree}")
    # The reference loader's bound: no file holds more points than this for its size.
    if n * _MIN_BYTES_PER_POINT > len(data) * _MAX_ZSTD_RATIO:
        raise SceneFormatError(
            f"{path}: .spz header claims {n} points, more than the file can hold"
        )
    check_read_count(n, path, ".spz header")
    # An empty scene has no streams at all (the writer leaves out empty ones).
    if streams > _MAX_STREAMS or not (
        _HEADER_V4.size <= toc <= len(data) - streams * _TOC_ENTRY.size
    ):
        raise SceneFormatError(f"{path}: .spz header is corrupt (stream table)")
    return n, sh_degree, bits, streams, toc


def _unzstd(path: Path, frame: bytes, expected: int) -> bytes:
    """One zstd stream, decompressed to exactly ``expected`` bytes (never more is read)."""
    import zstandard

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(frame, read_across_frames=True)
        with reader:
            data = reader.read(expected + 1)
    except zstandard.ZstdError:
        raise SceneFormatError(f"{path}: .spz stream is not valid zstd data") from None
    if len(data) != expected:
        raise SceneFormatError(f"{path}: .spz stream holds {len(data)} bytes, expected {expected}")
    return data


def _read_zstd(path: Path, data: bytes) -> _Packed:
    """Read a version 4 file: header, table of contents, one zstd frame per stream."""
    n, sh_degree, bits, count, toc = _zstd_header(path, data)
    expected = [*_stream_sizes(4, n), n * 3 * _SH_DIM[sh_degree]]
    expected = [size for size in expected if size] if n else expected[:0]
    if count != len(expected):
        raise SceneFormatError(
            f"{path}: .spz has {count} streams, expected {len(expected)} for degree {sh_degree}"
        )
    offset = toc + count * _TOC_ENTRY.size
    streams = []
    for index, size in enumerate(expected):
        compressed, uncompressed = _TOC_ENTRY.unpack_from(data, toc + index * _TOC_ENTRY.size)
        if uncompressed != size or compressed > len(data) - offset:
            raise SceneFormatError(f"{path}: .spz stream table does not match its header")
        # The sixth stream holds higher-order harmonics, which are not read (as in versions
        # 1-3): not decompressed either, it would be up to 72 bytes per splat.
        if index < 5:
            streams.append(_unzstd(path, data[offset : offset + compressed], size))
        offset += compressed
    if offset != len(data):
        raise SceneFormatError(f"{path}: .spz has {len(data) - offset} bytes after its streams")
    if not n:
        streams = [b""] * 5
    return _split(4, n, bits, streams)


def _read_packed(path: Path, data: bytes) -> _Packed:
    """The quantized streams of any ``.spz`` version (gzip 1-3 or plaintext-header 4)."""
    if data[:4] == b"NGSP":
        return _read_zstd(path, data)
    return _read_gzip(path, data)


def count_spz(path: str | os.PathLike[str]) -> int:
    """The point count in a ``.spz`` header (decompresses only the first 16 bytes)."""
    path = Path(path)
    with open(path, "rb") as fh:
        start = fh.read(_HEADER_V4.size)
    if start[:4] == b"NGSP":
        if len(start) < _HEADER_V4.size or _HEADER_V4.unpack(start)[1] != 4:
            raise SceneFormatError(f"{path}: not a readable .spz file (bad version 4 header)")
        return int(_HEADER_V4.unpack(start)[2])
    try:
        with gzip.open(path, "rb") as fh:
            return _legacy_header(path, fh.read(_HEADER.size))[1]
    except (OSError, EOFError, zlib.error) as error:
        if isinstance(error, FileNotFoundError | IsADirectoryError | PermissionError):
            raise
        raise SceneFormatError(f"{path}: not an .spz file (not a valid gzip stream)") from None


def read_spz(path: str | os.PathLike[str], *, frame: Frame = "opengl") -> Gaussians:
    """Read a ``.spz`` (versions 1-4) stored in ``frame`` into model-frame Gaussians.

    Higher-order spherical harmonics, if any, are ignored. Opacities of byte 0 or 255 are
    kept half a step inside (0, 1). The format has no camera data: focal length and image
    size are the reference loader's defaults (512 px, 640x480).

    Raises:
        SceneFormatError: not gzip or zstd, wrong magic, unsupported version, truncated.
    """
    path = Path(path)
    return decode_spz(path.read_bytes(), frame=frame, source=path)


def decode_spz(
    data: bytes, *, frame: Frame = "opengl", source: str | Path = "<bytes>"
) -> Gaussians:
    """Decode the bytes of a ``.spz`` (versions 1-4) stored in ``frame`` (see :func:`read_spz`).

    ``source`` names the data in error messages and the metadata.
    """
    path = Path(source)
    frame = check_frame(frame)
    packed = _read_packed(path, data)
    n = packed.count
    positions: np.ndarray
    if packed.version == 1:
        positions = packed.positions.view("<f2").astype(np.float32).reshape(n, 3)
    else:
        raw = packed.positions.reshape(n * 3, 3).astype(np.int32)
        fixed = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        positions = (fixed.astype(np.float64) / (1 << packed.fractional_bits)).reshape(n, 3)
    alphas = packed.alphas.astype(np.float64) / 255.0
    colors = packed.colors.astype(np.float64).reshape(n, 3)
    scales = np.exp(packed.scales.astype(np.float64).reshape(n, 3) / 16.0 - 10.0)
    if packed.version >= 3:
        xyzw = _unpack_rotations_v3(packed.rotations)
    else:
        xyz = packed.rotations.astype(np.float64).reshape(n, 3) / 127.5 - 1.0
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
        metadata={"source": str(path), "frame": frame, "spz_version": packed.version},
    )
