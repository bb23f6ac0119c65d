"""Read and write the ``.ply`` layout of Apple's ml-sharp (``sharp predict``), NumPy only.

The writer reproduces the reference file byte for byte in layout: the same ASCII header,
binary little-endian data, one vertex record of 14 float32 per Gaussian
(``x y z f_dc_0..2 opacity scale_0..2 rot_0..3``) followed by the supplementary elements
``extrinsic``, ``intrinsic``, ``image_size``, ``frame``, ``disparity``, ``color_space`` and
``version``. Values are encoded like the reference: colours linear RGB -> sRGB -> degree-0
spherical harmonics, opacity -> logit, scales -> natural log, rotations (w, x, y, z) as given.

The reader parses any binary PLY whose properties are scalars (little or big endian) and
undoes those encodings, converting sRGB colours back to linear RGB like the reference loader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mlsharp._atomic import atomic_write
from mlsharp.errors import MlsharpError
from mlsharp.gaussians import Gaussians

__all__ = [
    "PANORAMA_COMMENT",
    "PLY_LAYOUT_VERSION",
    "REFERENCE_ELEMENTS",
    "SH_C0",
    "VERTEX_PROPERTIES",
    "PlyFormatError",
    "count_ply",
    "header_comments",
    "is_reference_layout",
    "linear_to_srgb",
    "ply_header",
    "read_ply",
    "read_ply_raw",
    "srgb_to_linear",
    "write_ply",
]

#: Degree-0 spherical-harmonic basis constant ``sqrt(1 / (4 pi))`` (float64, as in the reference).
SH_C0 = np.sqrt(1.0 / (4.0 * np.pi))
# The reference divides float32 tensors by SH_C0, which torch does in float32 with the
# constant rounded to float32; doing the same here keeps f_dc bit-identical to it.
_SH_C0_F32 = np.float32(SH_C0)

#: Vertex properties in file order (all float32).
VERTEX_PROPERTIES: tuple[str, ...] = (
    "x",
    "y",
    "z",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
)

#: The reference's ``version`` element.
PLY_LAYOUT_VERSION: tuple[int, int, int] = (1, 5, 0)

# Supplementary one-property elements in file order: (name, count, PLY type).
_SUPPLEMENT: tuple[tuple[str, int, str], ...] = (
    ("extrinsic", 16, "float"),
    ("intrinsic", 9, "float"),
    ("image_size", 2, "uint"),
    ("frame", 2, "int"),
    ("disparity", 2, "float"),
    ("color_space", 1, "uchar"),
    ("version", 3, "uchar"),
)

# color_space codes of the reference (sharp.utils.color_space.encode_color_space).
_COLOR_SPACE_CODES = {"sRGB": 0, "linearRGB": 1}

# PLY scalar type names -> NumPy type codes (without byte order).
_PLY_TYPES: dict[str, str] = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}

_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">"}

# A header larger than this is not a splat file (the reference header is ~560 bytes;
# 3DGS files with 45 f_rest_* properties stay under 2 KiB).
_MAX_HEADER_BYTES = 1 << 20

# Defaults of the reference loader when a file has no intrinsic element (also used by the
# readers of formats that carry no camera: .splat, .spz, third-party PLY).
DEFAULT_FOCAL_PX = 512.0
DEFAULT_IMAGE_SIZE = (640, 480)


class PlyFormatError(MlsharpError, ValueError):
    """A file is not a PLY splat mlsharp can read (not a PLY, truncated, missing properties)."""

    exit_code = 3
    http_status = 422
    code = "invalid_ply"


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


#: Header comment of a scene that surrounds the camera (a 360° panorama, docs/panorama.md).
PANORAMA_COMMENT = "panorama 360 (one scene around the camera at the origin, +z forward)"


def scene_comments(gaussians: Gaussians) -> list[str]:
    """Header comments a scene's metadata asks for (a panorama says it is one)."""
    return [PANORAMA_COMMENT] if gaussians.metadata.get("panorama") else []


def header_comments(path: str | os.PathLike[str]) -> list[str]:
    """The ``comment`` lines of a PLY header (without the keyword)."""
    comments = []
    with open(path, "rb") as fh:
        for _ in range(10_000):  # the readers have already validated the header
            line = fh.readline(1 << 16).decode("ascii", "replace").strip()
            if line == "end_header" or not line:
                break
            if line.startswith("comment "):
                comments.append(line[len("comment ") :].strip())
    return comments


def is_panorama_file(comments: list[str]) -> bool:
    """Whether a PLY header's comments say the scene is a 360° panorama."""
    return any(comment.startswith("panorama ") for comment in comments)


def ply_header(num_vertices: int, comments: tuple[str, ...] | list[str] = ()) -> bytes:
    """Return the reference's byte-exact ASCII header for ``num_vertices`` Gaussians
    (``comments``, e.g. :data:`PANORAMA_COMMENT`, go after the format line)."""
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {comment}" for comment in comments]
    lines.append(f"element vertex {int(num_vertices)}")
    lines += [f"property float {name}" for name in VERTEX_PROPERTIES]
    for name, count, ply_type in _SUPPLEMENT:
        lines += [f"element {name} {count}", f"property {ply_type} {name}"]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Convert linear RGB to sRGB (IEC 61966-2-1 transfer function), float32 in and out."""
    x = np.asarray(linear, dtype=np.float32)
    # The power is taken in float64 and rounded once: within one float32 ulp of torch's
    # float32 pow (both differ from the exact value by at most one rounding).
    with np.errstate(invalid="ignore"):
        curve = np.power(x.astype(np.float64), 1.0 / 2.4).astype(np.float32)
    return np.where(
        x <= np.float32(0.0031308),
        np.float32(12.92) * x,
        np.float32(1.055) * curve - np.float32(0.055),
    )


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """Convert sRGB to linear RGB (inverse of :func:`linear_to_srgb`), float32 in and out."""
    c = np.asarray(srgb, dtype=np.float32)
    base = (c.astype(np.float64) + 0.055) / 1.055
    with np.errstate(invalid="ignore"):
        curve = np.power(base, 2.4).astype(np.float32)
    return np.where(c <= np.float32(0.04045), c / np.float32(12.92), curve)


def _quantiles_like_torch(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``torch.quantile(values, torch.tensor(qs))`` (linear interpolation) for float32 input.

    Replicates torch's float32 arithmetic (rank = q * (n - 1), weight = rank - floor(rank),
    fused-multiply-add ``lerp``), so the result matches the reference bit for bit; any NaN
    gives NaN, and an empty input gives NaN (torch raises). Uses a partial sort (O(n)).
    """
    v = np.asarray(values, dtype=np.float32).reshape(-1)
    n = v.size
    out = np.full(len(qs), np.nan, dtype=np.float32)
    if n == 0 or np.isnan(v).any():
        return out
    ranks = np.asarray(qs, dtype=np.float32) * np.float32(n - 1)
    below = np.floor(ranks).astype(np.int64)
    above = np.ceil(ranks).astype(np.int64)
    weights = ranks - below.astype(np.float32)
    kth = np.unique(np.concatenate([below, above]))
    part = np.partition(v, kth)
    lo = part[below].astype(np.float64)
    hi = part[above].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = (hi - lo).astype(np.float32).astype(np.float64)
        # torch's lerp is a fused multiply-add: small weights from the start, large ones
        # from the end. The float32 x float32 product is exact in float64, so float64
        # arithmetic followed by rounding to float32 emulates the FMA (up to a double
        # rounding of the sum, which would need ~29 exactly-tied bits: not seen in tests).
        w = weights.astype(np.float64)
        out[:] = np.where(weights < np.float32(0.5), lo + w * diff, hi + (w - 1.0) * diff)
    return out


def _vertex_records(gaussians: Gaussians) -> np.ndarray:
    """Encode the Gaussians as one C-contiguous (N, 14) little-endian float32 array."""
    n = len(gaussians)
    records = np.empty((n, len(VERTEX_PROPERTIES)), dtype="<f4")
    records[:, 0:3] = np.asarray(gaussians.positions, dtype=np.float32)

    colors = np.asarray(gaussians.colors, dtype=np.float32)
    if gaussians.color_space == "linearRGB":
        colors = linear_to_srgb(colors)
    elif gaussians.color_space != "sRGB":
        raise ValueError(
            f"Gaussians.color_space must be 'linearRGB' or 'sRGB', got {gaussians.color_space!r}"
        )
    records[:, 3:6] = (colors - np.float32(0.5)) / _SH_C0_F32

    opacities = np.asarray(gaussians.opacities, dtype=np.float32)
    scales = np.asarray(gaussians.scales, dtype=np.float32)
    # The ratio is formed in float32 like torch; logs are taken in float64 and rounded once
    # (within one float32 ulp of torch's log, and closer to it than NumPy's float32 log).
    # Opacity 0/1 or scale 0 give -inf/+inf like the reference; no warning for those.
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = opacities / (np.float32(1.0) - opacities)
        records[:, 6] = np.log(odds.astype(np.float64))
        records[:, 7:10] = np.log(scales.astype(np.float64))
    records[:, 10:14] = np.asarray(gaussians.rotations, dtype=np.float32)
    return records


def _supplement_bytes(gaussians: Gaussians, z: np.ndarray) -> bytes:
    """Encode the elements that follow the vertices (128 bytes)."""
    n = len(gaussians)
    width, height = (int(v) for v in gaussians.image_size)
    if not (0 <= width < 2**32 and 0 <= height < 2**32):
        raise ValueError(f"image_size {gaussians.image_size!r} does not fit in uint32")
    if n >= 2**31:
        raise ValueError(f"{n} Gaussians do not fit the int32 frame element")
    f = float(gaussians.focal_px)
    with np.errstate(divide="ignore"):
        disparity = _quantiles_like_torch(np.float32(1.0) / z, (0.1, 0.9))
    parts = (
        np.eye(4, dtype="<f4"),
        np.array([f, 0, width * 0.5, 0, f, height * 0.5, 0, 0, 1], dtype="<f4"),
        np.array([width, height], dtype="<u4"),
        np.array([1, n], dtype="<i4"),
        disparity.astype("<f4"),
        np.array([_COLOR_SPACE_CODES["sRGB"]], dtype="u1"),
        np.array(PLY_LAYOUT_VERSION, dtype="u1"),
    )
    return b"".join(part.tobytes() for part in parts)


def write_ply(gaussians: Gaussians, dest: str | os.PathLike[str]) -> Path:
    """Write ``gaussians`` to ``dest`` in the exact layout of ml-sharp's ``save_ply``.

    Colours are converted linear RGB -> sRGB (skipped when ``gaussians.color_space`` is
    already ``"sRGB"``) and stored as SH DC coefficients, opacities as logits, scales as
    natural logs; the file declares ``color_space = 0`` (sRGB). The write is atomic: a
    temporary file in the destination directory is fsynced and renamed over ``dest``
    (parent directories are created), so ``dest`` is either the old file or the complete
    new one.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: the Gaussians cannot be encoded (unknown colour space, image size or
            count out of range).
        OSError: the file cannot be written.
    """
    records = _vertex_records(gaussians)
    header = ply_header(len(gaussians), scene_comments(gaussians))
    chunks = (header, records, _supplement_bytes(gaussians, records[:, 2]))
    return atomic_write(dest, chunks)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _fail(path: Path, reason: str) -> PlyFormatError:
    return PlyFormatError(f"{path}: not a readable PLY splat file ({reason})")


def _read_header(fh: BinaryIO, path: Path) -> tuple[str, list[tuple[str, int, np.dtype]]]:
    """Parse the header; return the byte-order char and (name, count, dtype) per element."""
    magic = fh.readline(16)
    if magic.rstrip(b"\r\n") != b"ply":
        raise _fail(path, "missing 'ply' magic line")
    byte_order: str | None = None
    # (name, count, [(property name, type code)])
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    consumed = len(magic)
    while True:
        raw = fh.readline(_MAX_HEADER_BYTES)
        consumed += len(raw)
        if not raw.endswith(b"\n"):
            raise _fail(path, "header is truncated or has no 'end_header'")
        if consumed > _MAX_HEADER_BYTES:
            raise _fail(path, "header is too long")
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise _fail(path, "header is not ASCII") from None
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        keyword = words[0]
        if keyword == "end_header":
            break
        if keyword == "format":
            if len(words) != 3:
                raise _fail(path, f"bad format line {line!r}")
            if words[1] == "ascii":
                raise _fail(path, "ASCII PLY is not supported, only binary")
            if words[1] not in _FORMATS:
                raise _fail(path, f"unknown format {words[1]!r}")
            byte_order = _FORMATS[words[1]]
        elif keyword == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise _fail(path, f"bad element line {line!r}")
            if any(name == words[1] for name, _, _ in elements):
                raise _fail(path, f"duplicate element {words[1]!r}")
            elements.append((words[1], int(words[2]), []))
        elif keyword == "property":
            if not elements:
                raise _fail(path, "property before any element")
            if len(words) >= 2 and words[1] == "list":
                raise _fail(path, f"list property in element {elements[-1][0]!r} is not supported")
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise _fail(path, f"bad property line {line!r}")
            props = elements[-1][2]
            if any(name == words[2] for name, _ in props):
                raise _fail(path, f"duplicate property {words[2]!r} in {elements[-1][0]!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise _fail(path, f"unexpected header line {line!r}")
    if byte_order is None:
        raise _fail(path, "header has no format line")
    parsed = [
        (name, count, np.dtype([(prop, byte_order + code) for prop, code in props]))
        for name, count, props in elements
    ]
    return byte_order, parsed


def read_ply_raw(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every element of a binary PLY file as a NumPy structured array.

    Returns:
        ``{element name: structured array}`` in file order; each array has one field per
        declared property, with the file's byte order (arrays are writable).

    Raises:
        PlyFormatError: not a PLY file, ASCII format, list properties, truncated data.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        _, elements = _read_header(fh, path)
        needed = sum(count * dtype.itemsize for _, count, dtype in elements)
        data = bytearray(needed)
        got = fh.readinto(data) if needed else 0
    if got < needed:
        raise _fail(path, f"data is truncated: {got} of {needed} bytes after the header")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, count, dtype in elements:
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += count * dtype.itemsize
    return out


#: Names of the reference layout's supplementary elements (what tells it from plain 3DGS).
REFERENCE_ELEMENTS: frozenset[str] = frozenset(name for name, _, _ in _SUPPLEMENT)


def is_reference_layout(path: str | os.PathLike[str]) -> bool:
    """Whether the PLY file at ``path`` is in ml-sharp's layout (reads the header only).

    A file with any of the reference's supplementary elements (``intrinsic``,
    ``color_space``, ...) is; a plain 3DGS file (only ``vertex``, such as a
    ``.standard.ply`` or another tool's output) is not.

    Raises:
        PlyFormatError: the header is not a readable binary PLY header.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        _, elements = _read_header(fh, path)
    return any(name in REFERENCE_ELEMENTS for name, _, _ in elements)


def count_ply(path: str | os.PathLike[str]) -> int:
    """The number of splats (``vertex`` records) of a PLY file, from its header alone.

    Raises:
        PlyFormatError: the header is not a readable binary PLY header, or has no vertices.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        _, elements = _read_header(fh, path)
    for name, count, _ in elements:
        if name == "vertex":
            return count
    raise _fail(path, "no 'vertex' element")


def _supplement(raw: dict[str, np.ndarray], key: str) -> np.ndarray | None:
    """Values of property ``key``: its own element first, else any element that has it."""
    element = raw.get(key)
    if element is not None and element.dtype.names and key in element.dtype.names:
        return np.asarray(element[key])
    for name, element in raw.items():
        if name != "vertex" and element.dtype.names and key in element.dtype.names:
            return np.asarray(element[key])
    return None


def read_ply(path: str | os.PathLike[str]) -> Gaussians:
    """Read a splat ``.ply`` (ml-sharp layout or a plain 3DGS file) into :class:`Gaussians`.

    Undoes the writer's encodings: ``sigmoid`` of the opacity logits, ``exp`` of the log
    scales, colour ``f_dc * C0 + 0.5``; when the file's ``color_space`` is 0 (sRGB) the
    colours are converted back to linear RGB, so the result is always ``"linearRGB"``
    (like the reference loader; files without ``color_space`` are taken as linear).
    :func:`mlsharp.splat.read` sends only reference-layout files here and plain 3DGS
    files (sRGB DC, a frame comment) to :func:`~mlsharp.splat.read_standard_ply`.
    Focal length and image size come from ``intrinsic``/``image_size`` (a legacy 4-value
    ``intrinsic`` ``[fx, fy, W, H]`` is accepted); without ``intrinsic`` the focal length
    defaults to 512 px and the size to ``image_size`` or 640x480. Extra vertex properties
    (normals, ``f_rest_*``) and unknown elements are ignored.

    Raises:
        PlyFormatError: the file is not a readable PLY, or lacks a required property.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    raw = read_ply_raw(path)
    vertex = raw.get("vertex")
    if vertex is None:
        raise _fail(path, "no 'vertex' element")
    missing = [p for p in VERTEX_PROPERTIES if p not in (vertex.dtype.names or ())]
    if missing:
        raise _fail(path, f"vertex element lacks {', '.join(missing)}")

    def columns(*names: str) -> np.ndarray:
        return np.stack([vertex[name].astype(np.float32) for name in names], axis=1)

    positions = columns("x", "y", "z")
    sh_dc = columns("f_dc_0", "f_dc_1", "f_dc_2")
    scale_logs = columns("scale_0", "scale_1", "scale_2")
    rotations = columns("rot_0", "rot_1", "rot_2", "rot_3")
    opacity_logits = vertex["opacity"].astype(np.float32)

    colors = (sh_dc * SH_C0 + 0.5).astype(np.float32)
    code = _supplement(raw, "color_space")
    code_value = int(code.reshape(-1)[0]) if code is not None and code.size else 1
    if code_value == _COLOR_SPACE_CODES["sRGB"]:
        colors = srgb_to_linear(colors)
    elif code_value != _COLOR_SPACE_CODES["linearRGB"]:
        raise _fail(path, f"unknown color_space code {code_value}")

    with np.errstate(over="ignore"):
        opacities = (np.float32(1.0) / (np.float32(1.0) + np.exp(-opacity_logits))).astype(
            np.float32
        )
        scales = np.exp(scale_logs).astype(np.float32)

    intrinsic = _supplement(raw, "intrinsic")
    image_size = _supplement(raw, "image_size")
    if intrinsic is None:
        focal_px = DEFAULT_FOCAL_PX
        if image_size is not None and image_size.size == 2:
            size = (int(image_size[0]), int(image_size[1]))
        else:
            size = DEFAULT_IMAGE_SIZE
    elif image_size is None:
        if intrinsic.size != 4:
            raise _fail(path, f"intrinsic has {intrinsic.size} values and no image_size")
        focal_px = float(intrinsic[0])
        size = (int(intrinsic[2]), int(intrinsic[3]))
    else:
        if intrinsic.size != 9:
            raise _fail(path, f"intrinsic has {intrinsic.size} values, expected 9")
        if image_size.size != 2:
            raise _fail(path, f"image_size has {image_size.size} values, expected 2")
        focal_px = float(intrinsic[0])
        size = (int(image_size[0]), int(image_size[1]))

    metadata: dict = {"source": str(path)}
    version = _supplement(raw, "version")
    if version is not None:
        metadata["ply_version"] = tuple(int(v) for v in version.reshape(-1))
    if is_panorama_file(header_comments(path)):
        metadata["panorama"] = True
    return Gaussians(
        positions=positions,
        scales=scales,
        rotations=rotations,
        colors=colors,
        opacities=opacities,
        focal_px=focal_px,
        image_size=size,
        color_space="linearRGB",
        metadata=metadata,
    )
