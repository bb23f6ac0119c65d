"""glTF 2.0 binary (``.glb``) with Khronos' ``KHR_gaussian_splatting`` extension, NumPy only.

Written from the extension's specification (KhronosGroup/glTF,
``extensions/2.0/Khronos/KHR_gaussian_splatting``) and, for the optional compression, the
draft ``KHR_gaussian_splatting_compression_spz_2``. What a file holds:

* one mesh with one ``POINTS`` primitive (``mode`` 0), its attributes each in its own
  buffer view of the binary chunk, tightly packed, little endian:

  ==========================================  ============  ====================================
  attribute                                   accessor      value (N splats)
  ==========================================  ============  ====================================
  ``POSITION``                                VEC3 float    centre in glTF's frame (below)
  ``KHR_gaussian_splatting:ROTATION``         VEC4 float    unit quaternion (x, y, z, w)
  ``KHR_gaussian_splatting:SCALE``            VEC3 float    standard deviations, linear
  ``KHR_gaussian_splatting:OPACITY``          SCALAR float  opacity in [0, 1] (after sigmoid)
  ``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0``  VEC3 float    ``(sRGB - 0.5) / 0.28209479``
  ``COLOR_0``                                 VEC4 ubyte n  linear RGB and opacity (fallback
                                                            for viewers without splats)
  ==========================================  ============  ====================================

* the extension object ``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
  "projection": "perspective", "sortingMethod": "cameraDistance"}``: the DC coefficients
  reconstruct display sRGB, like every 3DGS ``.ply`` (the network predicts linear RGB; the
  writer converts);
* the frame: glTF is +Y up, right-handed, a camera looking down its local -Z. The model's
  OpenCV frame (+x right, +y down, +z forward) is rotated 180 degrees about x:
  ``(x, y, z) -> (x, -y, -z)``, quaternions ``(w, x, y, z) -> (w, x, -y, -z)`` (the
  ``opengl`` frame of :mod:`mlsharp.splat.common`; nothing is mirrored). The photographed
  surfaces then face +Z, glTF's "front";
* a perspective camera node at the origin with no rotation: the photo's viewpoint, its
  ``yfov = 2 atan(H / 2f)`` and ``aspectRatio = W / H`` (``extras`` keep ``focal_px`` and
  ``image_size`` exactly, for reading back).

``compression="spz"`` stores the splats as one SPZ stream (version 3, gzip) in a buffer
view named by ``KHR_gaussian_splatting_compression_spz_2`` inside the splatting extension
object; the attribute accessors then have no buffer view (only ``count``, types and the
position bounds), and the extension is required. As the draft asks, the stream is packed
from glTF's LUF axes: SPZ's internal RUB is glTF's frame turned 180 degrees about y.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Literal, TypeGuard

import numpy as np

from mlsharp._atomic import atomic_write
from mlsharp._version import __version__
from mlsharp.errors import ConfigError
from mlsharp.formats import GLB_COMPRESSIONS
from mlsharp.gaussians import Gaussians
from mlsharp.splat.common import (
    DEFAULT_FOCAL_PX,
    DEFAULT_IMAGE_SIZE,
    SceneFormatError,
    change_frame,
    from_srgb,
    normalized_quaternions,
    srgb_colors,
)
from mlsharp.splat.ply import SH_C0

__all__ = ["EXTENSION", "SPZ_EXTENSION", "count_glb", "read_glb", "write_glb"]

EXTENSION = "KHR_gaussian_splatting"
SPZ_EXTENSION = "KHR_gaussian_splatting_compression_spz_2"
_PREFIX = f"{EXTENSION}:"
Compression = Literal["none", "spz"]

_GLB_MAGIC = b"glTF"
_JSON_CHUNK = 0x4E4F534A
_BIN_CHUNK = 0x004E4942
_FLOAT, _UBYTE, _BYTE, _USHORT, _SHORT = 5126, 5121, 5120, 5123, 5122
_POINTS = 0
_ARRAY_BUFFER = 34962
_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_DTYPES = {_FLOAT: "<f4", _UBYTE: "u1", _BYTE: "i1", _USHORT: "<u2", _SHORT: "<i2"}
# Largest JSON chunk read (a splat file's JSON is a few kilobytes).
_MAX_JSON_BYTES = 16 << 20
# Image sizes read from a camera's extras or aspect ratio stay below this.
_MAX_IMAGE_SIDE = 2**31
_ZNEAR = 0.01
# A turn of 180 degrees about z: positions (x, y, z) -> (-x, -y, z), quaternions
# (w, x, y, z) -> (w, -x, -y, z).
_TURN_Z_POSITIONS = np.array([-1, -1, 1], dtype=np.float32)
_TURN_Z_QUATERNIONS = np.array([1, -1, -1, 1], dtype=np.float32)


def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def _camera(gaussians: Gaussians) -> dict[str, Any]:
    width, height = (int(v) for v in gaussians.image_size)
    focal = float(gaussians.focal_px)
    return {
        "type": "perspective",
        "perspective": {
            "yfov": 2.0 * math.atan(height / (2.0 * focal)),
            "aspectRatio": width / height,
            "znear": _ZNEAR,
        },
        "extras": {"focal_px": focal, "image_size": [width, height]},
    }


def _columns(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """The attribute arrays (glTF frame, little-endian) keyed by semantic."""
    positions, rotations = change_frame(
        gaussians.positions, normalized_quaternions(gaussians.rotations), "opencv", "opengl"
    )
    srgb = srgb_colors(gaussians).astype(np.float64)
    linear = np.clip(np.asarray(from_srgb(srgb.astype(np.float32)), dtype=np.float64), 0, 1)
    opacities = np.clip(np.asarray(gaussians.opacities, dtype=np.float64), 0.0, 1.0)
    rgba = np.concatenate([linear, opacities[:, None]], axis=1)
    return {
        "POSITION": positions.astype("<f4"),
        f"{_PREFIX}ROTATION": rotations[:, [1, 2, 3, 0]].astype("<f4"),
        f"{_PREFIX}SCALE": np.abs(np.asarray(gaussians.scales, dtype="<f4")),
        f"{_PREFIX}OPACITY": opacities.astype("<f4"),
        f"{_PREFIX}SH_DEGREE_0_COEF_0": ((srgb - 0.5) / SH_C0).astype("<f4"),
        "COLOR_0": np.rint(rgba * 255.0).astype("u1"),
    }


def _accessor(values: np.ndarray, view: int | None) -> dict[str, Any]:
    kind = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}[1 if values.ndim == 1 else values.shape[1]]
    accessor: dict[str, Any] = {
        "componentType": _UBYTE if values.dtype == np.uint8 else _FLOAT,
        "count": len(values),
        "type": kind,
    }
    if values.dtype == np.uint8:
        accessor["normalized"] = True
    if view is not None:
        accessor["bufferView"] = view
    return accessor


def _position_bounds(positions: np.ndarray) -> dict[str, list[float]]:
    """POSITION's min and max (required by glTF), over finite values."""
    finite = np.where(np.isfinite(positions), positions, np.nan)
    if not len(positions) or np.isnan(finite).all(axis=0).any():
        return {"min": [0.0, 0.0, 0.0], "max": [0.0, 0.0, 0.0]}
    return {
        "min": [float(v) for v in np.nanmin(finite, axis=0)],
        "max": [float(v) for v in np.nanmax(finite, axis=0)],
    }


def _spz_stream(gaussians: Gaussians) -> bytes:
    """The splats as an SPZ version 3 stream packed from glTF's LUF axes."""
    from mlsharp.splat.spz import spz_bytes

    # glTF (x, y, z) -> SPZ's RUB (-x, y, -z); from the OpenCV frame that is (-x, -y, z),
    # a turn of 180 degrees about z, which spz_bytes' "opencv" frame then stores as is.
    positions = np.asarray(gaussians.positions, dtype=np.float32) * _TURN_Z_POSITIONS
    rotations = normalized_quaternions(gaussians.rotations) * _TURN_Z_QUATERNIONS
    turned = Gaussians(
        positions=positions,
        scales=gaussians.scales,
        rotations=rotations,
        colors=gaussians.colors,
        opacities=gaussians.opacities,
        focal_px=gaussians.focal_px,
        image_size=gaussians.image_size,
        color_space=gaussians.color_space,
    )
    return spz_bytes(turned, frame="opencv", version=3)


def glb_bytes(gaussians: Gaussians, *, compression: Compression = "none") -> bytes:
    """The bytes of a ``.glb`` holding ``gaussians`` (see the module's description)."""
    if compression not in GLB_COMPRESSIONS:
        raise ConfigError(
            f"unknown glb compression {compression!r} (choose from: {', '.join(GLB_COMPRESSIONS)})"
        )
    columns = _columns(gaussians)
    blobs: list[bytes] = []
    views: list[dict[str, Any]] = []

    def add_view(data: bytes, target: int | None) -> int:
        offset = sum(len(blob) for blob in blobs)
        view: dict[str, Any] = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        views.append(view)
        blobs.append(_pad(data, b"\0"))
        return len(views) - 1

    splatting: dict[str, Any] = {
        "kernel": "ellipse",
        "colorSpace": "srgb_rec709_display",
        "projection": "perspective",
        "sortingMethod": "cameraDistance",
    }
    accessors: list[dict[str, Any]] = []
    attributes: dict[str, int] = {}
    for semantic, values in columns.items():
        view = None if compression == "spz" else add_view(values.tobytes(), _ARRAY_BUFFER)
        accessor = _accessor(values, view)
        if semantic == "POSITION":
            accessor.update(_position_bounds(values))
        attributes[semantic] = len(accessors)
        accessors.append(accessor)
    used = [EXTENSION]
    document: dict[str, Any] = {}
    if compression == "spz":
        splatting["extensions"] = {
            SPZ_EXTENSION: {"bufferView": add_view(_spz_stream(gaussians), None)}
        }
        used.append(SPZ_EXTENSION)
        document["extensionsRequired"] = [SPZ_EXTENSION]
    binary = b"".join(blobs)
    document.update(
        {
            "asset": {"version": "2.0", "generator": f"mlsharp {__version__}"},
            "extensionsUsed": used,
            "scene": 0,
            "scenes": [{"nodes": [0, 1]}],
            "nodes": [
                {"name": "splats", "mesh": 0},
                {"name": "photo camera", "camera": 0},
            ],
            "cameras": [_camera(gaussians)],
            "meshes": [
                {
                    "name": "splats",
                    "primitives": [
                        {
                            "attributes": attributes,
                            "mode": _POINTS,
                            "extensions": {EXTENSION: splatting},
                        }
                    ],
                }
            ],
            "accessors": accessors,
            "bufferViews": views,
            "buffers": [{"byteLength": len(binary)}],
        }
    )
    text = _pad(json.dumps(document, separators=(",", ":")).encode("utf-8"), b" ")
    length = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join(
        [
            struct.pack("<4sII", _GLB_MAGIC, 2, length),
            struct.pack("<II", len(text), _JSON_CHUNK),
            text,
            struct.pack("<II", len(binary), _BIN_CHUNK),
            binary,
        ]
    )


def write_glb(
    gaussians: Gaussians, dest: str | os.PathLike[str], *, compression: Compression = "none"
) -> Path:
    """Write ``gaussians`` as a ``.glb`` with ``KHR_gaussian_splatting`` (atomic write).

    Args:
        gaussians: the scene (model frame).
        dest: output path.
        compression: ``"none"`` (plain accessors, default) or ``"spz"`` (one SPZ v3
            stream, ``KHR_gaussian_splatting_compression_spz_2``).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: unknown ``compression``.
    """
    return atomic_write(dest, (glb_bytes(gaussians, compression=compression),))


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _objects(value: object) -> list[dict[str, Any]]:
    """The JSON objects of a JSON list (an array of other things, or no array: none)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _object(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _positive(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite JSON number above zero (JSON may hold ``Infinity``)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _header_and_json(path: Path) -> bytes:
    """The first bytes of a ``.glb``: its header and JSON chunk, not the binary chunk."""
    with open(path, "rb") as fh:
        head = fh.read(20)
        if len(head) < 20:
            return head
        (json_length,) = struct.unpack_from("<I", head, 12)
        return head + fh.read(min(json_length, _MAX_JSON_BYTES))


class _Glb:
    """A parsed ``.glb``: its JSON document and binary chunk (``complete=False``: ``data``
    ends after the JSON chunk, enough to count the splats)."""

    def __init__(self, path: Path, data: bytes, *, complete: bool = True) -> None:
        self.path = path
        if len(data) < 20 or data[:4] != _GLB_MAGIC:
            raise self.fail("no glTF binary header")
        _, version, length = struct.unpack_from("<4sII", data)
        if version != 2:
            raise self.fail(f"glTF binary version {version}, expected 2")
        if complete and length > len(data):
            raise self.fail(f"truncated ({len(data)} of {length} bytes)")
        json_length, kind = struct.unpack_from("<II", data, 12)
        if kind != _JSON_CHUNK or json_length > min(_MAX_JSON_BYTES, length - 20, len(data) - 20):
            raise self.fail("bad JSON chunk")
        try:
            self.document = json.loads(data[20 : 20 + json_length])
        except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting: Recursion
            raise self.fail("its JSON chunk is not JSON") from None
        if not isinstance(self.document, dict):
            raise self.fail("its JSON chunk is not an object")
        self.binary = b""
        offset = 20 + json_length
        if complete and offset + 8 <= length:
            bin_length, kind = struct.unpack_from("<II", data, offset)
            if kind != _BIN_CHUNK or bin_length > length - offset - 8:
                raise self.fail("bad binary chunk")
            self.binary = data[offset + 8 : offset + 8 + bin_length]

    def fail(self, reason: str) -> SceneFormatError:
        return SceneFormatError(f"{self.path}: not a readable .glb splat file ({reason})")

    def item(self, kind: str, index: object) -> dict[str, Any]:
        items = self.document.get(kind)
        if not isinstance(items, list) or not isinstance(index, int) or not 0 <= index < len(items):
            raise self.fail(f"it refers to a missing {kind} entry {index!r}")
        found = items[index]
        if not isinstance(found, dict):
            raise self.fail(f"{kind}[{index}] is not an object")
        return found

    def view_bytes(self, index: object) -> tuple[bytes, int | None]:
        view = self.item("bufferViews", index)
        if view.get("buffer", 0) != 0:
            raise self.fail("it uses external buffers")
        start = view.get("byteOffset", 0)
        length = view.get("byteLength")
        if not (isinstance(start, int) and isinstance(length, int) and start >= 0 <= length):
            raise self.fail(f"bufferViews[{index}] has a bad range")
        if start + length > len(self.binary):
            raise self.fail(f"bufferViews[{index}] lies outside the binary chunk")
        stride = view.get("byteStride")
        return self.binary[start : start + length], stride if isinstance(stride, int) else None

    def accessor(self, index: object, count: int) -> np.ndarray:
        """An accessor's values as float64 (count, components), normalized ints scaled."""
        accessor = self.item("accessors", index)
        type_name, component = accessor.get("type"), accessor.get("componentType")
        kind = _COMPONENTS.get(type_name) if isinstance(type_name, str) else None
        dtype_code = _DTYPES.get(component) if isinstance(component, int) else None
        if kind is None or dtype_code is None or accessor.get("count") != count:
            raise self.fail(f"accessors[{index}] has an unsupported type or count")
        if "sparse" in accessor or "bufferView" not in accessor:
            raise self.fail(f"accessors[{index}] has no plain buffer view")
        data, stride = self.view_bytes(accessor["bufferView"])
        item = np.dtype(dtype_code).itemsize * kind
        stride = stride or item
        offset = accessor.get("byteOffset", 0)
        if not isinstance(offset, int) or offset < 0 or stride < item:
            raise self.fail(f"accessors[{index}] has a bad offset or stride")
        if offset + (stride * (count - 1) + item if count else 0) > len(data):
            raise self.fail(f"accessors[{index}] runs past its buffer view")
        rows = np.lib.stride_tricks.as_strided(
            np.frombuffer(data, dtype=np.uint8, offset=offset, count=len(data) - offset),
            shape=(count, item),
            strides=(stride, 1),
        )
        values = np.ascontiguousarray(rows).view(dtype_code).astype(np.float64)
        if accessor.get("normalized"):
            values = _denormalize(values, dtype_code)
        return values.reshape(count, kind)


def _denormalize(values: np.ndarray, dtype_code: str) -> np.ndarray:
    """glTF's normalized integers to floats (signed ones clamp at -1)."""
    info = np.iinfo(np.dtype(dtype_code))
    return np.maximum(values / info.max, -1.0)


def _splat_primitive(glb: _Glb) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first primitive with the splatting extension, and that extension object."""
    for mesh in _objects(glb.document.get("meshes")):
        for primitive in _objects(mesh.get("primitives")):
            extension = _object(primitive.get("extensions")).get(EXTENSION)
            if isinstance(extension, dict):
                return primitive, extension
    raise glb.fail(f"no mesh primitive uses {EXTENSION}")


def _camera_of(glb: _Glb) -> tuple[float, tuple[int, int]]:
    """Focal length (px) and image size from the first perspective camera, else defaults."""
    for camera in _objects(glb.document.get("cameras")):
        extras = _object(camera.get("extras"))
        focal, size = extras.get("focal_px"), extras.get("image_size")
        if (
            _positive(focal)
            and isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and 0 < v < _MAX_IMAGE_SIDE for v in size)
        ):
            return float(focal), (size[0], size[1])
        perspective = _object(camera.get("perspective"))
        yfov, aspect = perspective.get("yfov"), perspective.get("aspectRatio")
        if _positive(yfov) and yfov < math.pi:
            height = DEFAULT_IMAGE_SIZE[1]
            width = height * aspect if _positive(aspect) else 0.0
            if not 1 <= width < _MAX_IMAGE_SIDE:
                width = height * 4 / 3
            return height / (2.0 * math.tan(yfov / 2.0)), (round(width), height)
    return DEFAULT_FOCAL_PX, DEFAULT_IMAGE_SIZE


def _from_spz(glb: _Glb, extension: dict[str, Any], count: int) -> Gaussians:
    """The splats of a ``KHR_gaussian_splatting_compression_spz_2`` stream (model frame)."""
    from mlsharp.splat.spz import decode_spz

    data, _ = glb.view_bytes(extension.get("bufferView"))
    turned = decode_spz(data, frame="opencv", source=glb.path)
    if len(turned) != count:
        raise glb.fail(f"its SPZ stream has {len(turned)} splats, the accessors {count}")
    # Undo the writer's turn of 180 degrees about z (see _spz_stream).
    turned.positions = turned.positions * _TURN_Z_POSITIONS
    turned.rotations = turned.rotations * _TURN_Z_QUATERNIONS
    return turned


def _read_attributes(
    glb: _Glb, attributes: dict[str, Any], count: int, color_space: str
) -> dict[str, np.ndarray]:
    """Positions, rotations (w, x, y, z), scales, opacities and linear colours (glTF frame)."""
    names = {
        "POSITION": "POSITION",
        "rotation": f"{_PREFIX}ROTATION",
        "scale": f"{_PREFIX}SCALE",
        "opacity": f"{_PREFIX}OPACITY",
        "sh0": f"{_PREFIX}SH_DEGREE_0_COEF_0",
    }
    missing = [name for name in names.values() if name not in attributes]
    if missing:
        raise glb.fail(f"the splat primitive lacks {', '.join(missing)}")
    xyzw = glb.accessor(attributes[names["rotation"]], count)
    dc = 0.5 + SH_C0 * glb.accessor(attributes[names["sh0"]], count)
    colors = dc if color_space == "lin_rec709_display" else from_srgb(dc.astype(np.float32))
    return {
        "positions": glb.accessor(attributes["POSITION"], count),
        "rotations": xyzw[:, [3, 0, 1, 2]],
        "scales": glb.accessor(attributes[names["scale"]], count),
        "opacities": glb.accessor(attributes[names["opacity"]], count)[:, 0],
        "colors": np.asarray(colors, dtype=np.float64),
    }


def _load(path: Path, *, complete: bool = True) -> tuple[_Glb, dict[str, Any], dict[str, Any], int]:
    data = path.read_bytes() if complete else _header_and_json(path)
    glb = _Glb(path, data, complete=complete)
    primitive, extension = _splat_primitive(glb)
    attributes = primitive.get("attributes")
    if not isinstance(attributes, dict) or "POSITION" not in attributes:
        raise glb.fail("the splat primitive has no POSITION")
    count = glb.item("accessors", attributes["POSITION"]).get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise glb.fail("POSITION has no count")
    return glb, primitive, extension, count


def count_glb(path: str | os.PathLike[str]) -> int:
    """The number of splats of a ``.glb`` (its POSITION accessor's count), read from the
    header and JSON chunk alone."""
    return _load(Path(path), complete=False)[3]


def read_glb(path: str | os.PathLike[str]) -> Gaussians:
    """Read a ``.glb`` with ``KHR_gaussian_splatting`` back into model-frame Gaussians.

    Reads the first splat primitive (plain accessors of the types the extension allows,
    or its SPZ compression stream) and the first perspective camera (the photo's focal
    length and size from our ``extras``, else from ``yfov``/``aspectRatio`` at 480 px
    high, else the reference loader's defaults). Node transforms are not applied: the
    splats are taken as given in glTF's frame. Colours come back as linear RGB.

    Raises:
        SceneFormatError: not a glTF binary, no splat primitive, data out of range.
    """
    path = Path(path)
    glb, primitive, extension, count = _load(path)
    focal_px, image_size = _camera_of(glb)
    compressed = _object(extension.get("extensions")).get(SPZ_EXTENSION)
    if isinstance(compressed, dict):
        scene = _from_spz(glb, compressed, count)
        scene.focal_px, scene.image_size = focal_px, image_size
        scene.metadata = {"source": str(path), "frame": "opengl", "compression": "spz"}
        return scene
    color_space = extension.get("colorSpace", "srgb_rec709_display")
    values = _read_attributes(glb, primitive["attributes"], count, color_space)
    positions, rotations = change_frame(
        values["positions"], normalized_quaternions(values["rotations"]), "opengl", "opencv"
    )
    return Gaussians(
        positions=positions,
        scales=np.abs(values["scales"]).astype(np.float32),
        rotations=rotations,
        colors=values["colors"].astype(np.float32),
        opacities=np.clip(values["opacities"], 0.0, 1.0).astype(np.float32),
        focal_px=focal_px,
        image_size=image_size,
        color_space="linearRGB",
        metadata={"source": str(path), "frame": "opengl"},
    )
