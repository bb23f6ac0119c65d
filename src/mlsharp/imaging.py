"""Decode one photo into the RGB array and focal length that SHARP expects.

This is the decode step of the single inference path. It reproduces the preprocessing of
Apple's reference ``sharp`` implementation (``sharp.utils.io.load_rgb``) bit for bit for
every input the reference handles, and behaves sensibly where the reference would crash
or produce garbage.

Rules shared with the reference:

* **Orientation.** The EXIF ``Orientation`` tag is honoured only for the pure rotations:
  3 -> ``ROTATE_180``, 6 -> ``ROTATE_270``, 8 -> ``ROTATE_90`` (Pillow's names). The
  mirrored values 2, 4, 5 and 7 are ignored, as in the reference. Width, height and the
  focal length in pixels are computed *after* the rotation. HEIC/HEIF files come out of
  libheif already rotated (pillow_heif resets their EXIF orientation to 1).
* **EXIF lookup.** The Exif sub-IFD (``0x8769``, names from ``PIL.ExifTags.TAGS``) is
  merged with the base IFD (names from ``PIL.TiffTags.TAGS_V2``); the base IFD wins.
* **Focal length.** ``FocalLengthIn35mmFilm`` (or ``FocalLenIn35mmFilm``) if present and
  >= 1; otherwise ``FocalLength`` (30 mm if absent), multiplied by 8.4 when below 10 mm (a
  crude phone-sensor guess). Then ``f_px = f_35 * sqrt(W² + H²) / sqrt(36² + 24²)`` in
  float64. A user-supplied 35 mm-equivalent focal overrides EXIF. Unlike the reference,
  unreadable, non-finite or non-positive EXIF values count as missing, and so do values
  whose 35 mm equivalent is outside ``MIN_FOCAL_MM``..``MAX_FOCAL_MM`` (they made the
  network's output non-finite): the next source is used and ``focal_warning`` says why.
  A user-given focal outside that range is a ``ConfigError``.
* **Pixels.** ``np.asarray`` of the Pillow image; grey is stacked to three channels and an
  alpha channel is dropped *without* compositing (the RGB under transparent pixels is
  kept). HEIF high-bit-depth images are converted to 8 bit (``convert_hdr_to_8bit``).

Other modes (the reference would return nonsense for them): ``LA`` -> its grey channel
stacked; ``P``/``PA`` -> RGBA via the palette, alpha dropped; ``1`` -> grey 0/255;
``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and the rest -> ``convert("RGB")``. 16-bit grey
(``I;16*``) stays ``uint16``. Pillow decodes 16-bit-per-channel RGB(A) PNG/TIFF to 8-bit
``RGB``/``RGBA`` itself, so those come out as ``uint8`` (exactly like the reference).
32-bit ``I`` and ``F`` images are mapped into ``uint16``, see ``_wide_to_uint16``.

The format is detected from the content, never from the file name.

**Memory.** What decoding an image will allocate is estimated from its header before any
pixel is decoded (:func:`decode_bytes`: width x height x the peak bytes per pixel of its
mode and format; 16-bit, 32-bit, WebP and HEIC images cost more per pixel than 8-bit
JPEG/PNG). ``max_decode_bytes`` bounds one image; a :class:`DecodeBudget` bounds all the
images a process decodes at once (the service's ``max_decode_bytes``). Pixels are
converted by strips of rows, so no whole-image temporary sits beside Pillow's buffer.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import stat
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import ExifTags, Image, TiffTags, UnidentifiedImageError

from mlsharp.errors import (
    ConfigError,
    ImageTooLarge,
    InvalidImage,
    MlsharpError,
    ServiceUnavailable,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_FOCAL_MM",
    "MIN_FOCAL_MM",
    "SUPPORTED_EXTENSIONS",
    "DecodeBudget",
    "FocalSource",
    "ImageSource",
    "LoadedImage",
    "decode_bytes",
    "focal_length_px",
    "is_supported_path",
    "load_image",
]

DEFAULT_MAX_PIXELS = 100_000_000
"""Default upper bound on width x height, checked from the header before decoding."""

MIN_FOCAL_MM = 1.0
"""Shortest accepted 35 mm-equivalent focal length (a 175-degree diagonal field of view)."""
MAX_FOCAL_MM = 10_000.0
"""Longest accepted 35 mm-equivalent focal length (beyond any lens, converter and crop)."""

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif",
)  # fmt: skip
"""File-name extensions (lower case, with the dot) worth trying when scanning a folder."""

FocalSource = Literal["user", "exif_35mm", "exif_focal_length", "default", "panorama"]
ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF")  # JPEG covers MPO
_FORMAT_NAMES = "JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF"
_ROT90_TURNS = {3: 2, 6: -1, 8: 1}  # EXIF orientation -> np.rot90 k (PIL 180 / 270 / 90)
_DEFAULT_FOCAL_MM = 30.0
_FULL_FRAME_DIAGONAL = np.sqrt(36**2 + 24**2)
# Peak bytes per pixel of decoding each Pillow mode into our array: Pillow's buffer (4
# bytes per pixel for every multi-band mode), a strip and the output (3 x 1 or 3 x 2
# bytes), rounded up from measurements (benchmarks/bench_decode_memory.py, docs/benchmarks.md).
_DECODE_BYTES_PER_PIXEL = {"1": 6, "L": 6, "P": 6, "LA": 10, "La": 10, "PA": 10, "I": 14, "F": 14}
_DECODE_BYTES_WIDE_GREY = 12  # I;16, I;16B, I;16L, I;16N
_DECODE_BYTES_OTHER = 11  # RGB, RGBA, CMYK, YCbCr, LAB, HSV ...
# Decoders that fill a whole-image buffer of their own before Pillow copies it.
_DECODER_BYTES_PER_PIXEL = {"WEBP": 8, "HEIF": 16}

_heif_lock = threading.Lock()
_heif_registered = False


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded, upright RGB photo plus the focal length SHARP should assume.

    ``pixels`` is H x W x 3, C-contiguous, ``uint8`` for 8-bit sources and ``uint16`` for
    16-bit ones. ``focal_mm_35`` is the 35 mm-equivalent focal length used to derive
    ``focal_px``; ``focal_source`` says where it came from.
    """

    pixels: np.ndarray
    focal_px: float
    focal_mm_35: float
    focal_source: FocalSource
    name: str
    format: str = ""
    projection: str | None = None
    #: Why an EXIF focal length was not used (it was outside the accepted range), if so.
    focal_warning: str | None = None

    @property
    def width(self) -> int:
        """Width in pixels (after EXIF rotation)."""
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels (after EXIF rotation)."""
        return int(self.pixels.shape[0])

    def to_float32(self) -> np.ndarray:
        """Return H x W x 3 float32 in [0, 1] (bit-identical to ``tensor.float() / 255``)."""
        scale = 65535.0 if self.pixels.dtype == np.uint16 else 255.0
        return self.pixels.astype(np.float32) / np.float32(scale)


def is_supported_path(path: str | os.PathLike[str]) -> bool:
    """Tell whether a file name has an image extension mlsharp reads (case-insensitive)."""
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def focal_length_px(focal_mm_35: float, width: int, height: int) -> float:
    """Convert a 35 mm-equivalent focal length to pixels for a ``width`` x ``height`` image.

    Uses the diagonal ratio in float64, exactly as the reference does.
    """
    return float(focal_mm_35 * np.sqrt(width**2.0 + height**2.0) / _FULL_FRAME_DIAGONAL)


def load_image(
    source: ImageSource,
    *,
    focal_mm: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
    max_decode_bytes: int | None = None,
    decode_budget: DecodeBudget | None = None,
    name: str | None = None,
) -> LoadedImage:
    """Decode a photo (path, bytes or binary file object) the way the reference SHARP does.

    ``focal_mm`` (35 mm-equivalent, ``MIN_FOCAL_MM``..``MAX_FOCAL_MM``) overrides the
    EXIF focal length. ``max_pixels`` bounds width x height and ``max_decode_bytes`` the
    memory decoding needs (:func:`decode_bytes`), both checked from the header before any
    pixel data is decoded; ``decode_budget`` (a :class:`DecodeBudget`) shares a bound on
    that memory between threads. ``max_bytes`` bounds the encoded size. ``None`` disables
    a limit (Pillow's own decompression-bomb limit, 2 x ``Image.MAX_IMAGE_PIXELS``, still
    applies). ``name`` is used in error messages (default: the file name, ``"<bytes>"``
    or ``"<stream>"``).

    Raises ``InvalidImage`` for unreadable input, ``ImageTooLarge`` when a limit is
    exceeded, ``ConfigError`` for invalid arguments, and ``ServiceUnavailable`` when the
    budget stays full.
    """
    user_focal = check_focal_mm(focal_mm)
    _check_limit("max_pixels", max_pixels)
    _check_limit("max_bytes", max_bytes)
    _check_limit("max_decode_bytes", max_decode_bytes)
    label = _clean_name(name if name is not None else _default_name(source))
    with _open_source(source, label, max_bytes) as fp:
        pixels, exif, fmt, projection = _decode(
            fp, label, max_pixels, max_decode_bytes, decode_budget
        )
    pixels = _apply_orientation(pixels, exif.get("Orientation"))
    origin: FocalSource = "user"
    warning: str | None = None
    if user_focal is not None:
        f35 = user_focal
    else:
        f35, origin, warning = _focal_from_exif(exif)
    height, width = pixels.shape[:2]
    return LoadedImage(
        pixels=pixels,
        focal_px=focal_length_px(f35, width, height),
        focal_mm_35=f35,
        focal_source=origin,
        name=label,
        format=fmt,
        projection=projection,
        focal_warning=warning,
    )


def decode_bytes(mode: str, width: int, height: int, image_format: str = "") -> int:
    """Peak bytes decoding a ``width`` x ``height`` image of Pillow ``mode`` (and Pillow
    ``image_format``) takes: an upper estimate of the decoder's and Pillow's buffers, a strip
    and the output array."""
    if mode.startswith("I;16"):
        per_pixel = _DECODE_BYTES_WIDE_GREY
    else:
        per_pixel = _DECODE_BYTES_PER_PIXEL.get(mode, _DECODE_BYTES_OTHER)
    per_pixel += _DECODER_BYTES_PER_PIXEL.get(image_format.upper(), 0)
    return width * height * per_pixel


class DecodeBudget:
    """Memory for decoding images, shared by the threads of a process.

    Each decode reserves :func:`decode_bytes` of its image before decoding and gives it
    back after, so the images decoded at once never add up to more than ``max_bytes``.
    One image that needs more on its own is :class:`ImageTooLarge`; one that does not fit
    beside the others waits up to ``wait_seconds``, then :class:`ServiceUnavailable`.
    """

    def __init__(self, max_bytes: int, *, wait_seconds: float = 30.0) -> None:
        _check_limit("max_bytes", max_bytes)
        self.max_bytes = max_bytes
        self.wait_seconds = wait_seconds
        self._used = 0
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        """Bytes reserved right now."""
        return self._used

    @contextlib.contextmanager
    def reserve(self, nbytes: int, label: str) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the ``with`` block (``label`` names the image)."""
        _refuse_over(nbytes, self.max_bytes, label)
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._used + nbytes <= self.max_bytes, timeout=self.wait_seconds
            ):
                raise ServiceUnavailable(
                    f"cannot decode {label} now: other images use the decoding memory; retry later",
                    retry_after=5.0,
                )
            self._used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()


# -- arguments and sources -------------------------------------------------------------


def check_focal_mm(focal_mm: float | None) -> float | None:
    """Validate a user focal length (35 mm equivalent): ``None``, or a number from
    ``MIN_FOCAL_MM`` to ``MAX_FOCAL_MM``; raises :class:`ConfigError` otherwise."""
    if focal_mm is None:
        return None
    try:
        value = float(focal_mm)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"focal_mm must be a number, got {focal_mm!r}") from None
    if isinstance(focal_mm, bool) or not _focal_in_range(value):
        raise ConfigError(
            f"focal_mm must be a 35 mm-equivalent focal length from {MIN_FOCAL_MM:g} to "
            f"{MAX_FOCAL_MM:g} mm, got {focal_mm!r}"
        )
    return value


def _focal_in_range(value: float) -> bool:
    return math.isfinite(value) and MIN_FOCAL_MM <= value <= MAX_FOCAL_MM


def _check_limit(what: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{what} must be a positive integer or None, got {value!r}")


def _default_name(source: object) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.name or str(path)
    stream_name = getattr(source, "name", None)
    return Path(stream_name).name if isinstance(stream_name, str) and stream_name else "<stream>"


def _clean_name(name: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(name))


def _open_source(source: ImageSource, label: str, max_bytes: int | None) -> BinaryIO:
    """Return a seekable binary stream over the encoded image; the caller closes it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), label, max_bytes)
    elif hasattr(source, "read"):
        data = _read_stream(source, label, max_bytes)
    else:
        raise ConfigError(f"cannot read {label}: expected a path, bytes or a binary file object")
    _check_size(len(data), label, max_bytes)
    return io.BytesIO(data)


def _open_path(path: Path, label: str, max_bytes: int | None) -> BinaryIO:
    try:
        fp = path.open("rb")
        info = os.fstat(fp.fileno())
    except OSError as exc:
        raise InvalidImage(f"cannot read {label}: {exc.strerror or _reason(exc)}") from exc
    if stat.S_ISREG(info.st_mode):
        try:
            _check_size(info.st_size, label, max_bytes)
        except InvalidImage:
            fp.close()
            raise
        return fp
    with fp:  # a pipe or device: read it (bounded) like a stream
        data = _read_stream(fp, label, max_bytes)
    _check_size(len(data), label, max_bytes)
    return io.BytesIO(data)


def _read_stream(stream: Any, label: str, max_bytes: int | None) -> bytes:
    try:
        data = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
    except (OSError, ValueError) as exc:
        raise InvalidImage(f"cannot read {label}: {_reason(exc)}") from exc
    if not isinstance(data, (bytes, bytearray)):
        raise ConfigError(f"cannot read {label}: the file object must be opened in binary mode")
    return bytes(data)


def _check_size(size: int, label: str, max_bytes: int | None) -> None:
    if size == 0:
        raise InvalidImage(f"cannot read {label}: empty file")
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLarge(
            f"{label} is too large: {size:,} bytes exceeds the limit of {max_bytes:,} bytes"
        )


# -- decoding --------------------------------------------------------------------------


def _register_heif() -> None:
    """Register pillow_heif's opener once (lazily, so importing mlsharp stays cheap)."""
    global _heif_registered
    with _heif_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError:  # pragma: no cover - pillow_heif is a hard dependency
            pass
        else:
            pillow_heif.register_heif_opener()
        _heif_registered = True


def _decode(
    fp: BinaryIO,
    label: str,
    max_pixels: int | None,
    max_decode_bytes: int | None,
    budget: DecodeBudget | None,
) -> tuple[np.ndarray, dict, str, str | None]:
    """Open, size-check, fully decode and convert; returns (pixels, merged EXIF, format,
    GPano projection type)."""
    _register_heif()
    img = _open_lazily(fp, label)
    with img:
        _check_pixels(img.size, label, max_pixels)
        needed = decode_bytes(img.mode, *img.size, str(img.format or ""))
        if max_decode_bytes is not None:
            _refuse_over(needed, max_decode_bytes, label)
        with budget.reserve(needed, label) if budget else contextlib.nullcontext():
            try:
                img.load()
                exif = _read_exif(img)
                projection = _gpano_projection(img)
                pixels = _to_rgb_array(img)
            except MlsharpError:
                raise
            except Image.DecompressionBombError as exc:
                raise ImageTooLarge(f"{label} is too large: {_reason(exc)}") from exc
            except Exception as exc:
                raise InvalidImage(f"cannot read {label}: {_reason(exc)}") from exc
        return pixels, exif, str(img.format or ""), projection


def _open_lazily(fp: BinaryIO, label: str) -> Image.Image:
    """``Image.open`` (header only); our own pixel limit replaces Pillow's bomb warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{label} is too large: {_reason(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"cannot read {label}: not a supported image ({_FORMAT_NAMES})") from exc
    except Exception as exc:
        raise InvalidImage(f"cannot read {label}: {_reason(exc)}") from exc


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"cannot read {label}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"{label} is too large: {width}x{height} = {width * height:,} pixels exceeds "
            f"the limit of {max_pixels:,} pixels"
        )


def _refuse_over(needed: int, max_bytes: int, label: str) -> None:
    if needed > max_bytes:
        raise ImageTooLarge(
            f"{label} is too large: decoding it needs about {needed / 2**20:,.0f} MiB of "
            f"memory, over the limit of {max_bytes / 2**20:,.0f} MiB"
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _read_exif(img: Image.Image) -> dict[str, Any]:
    """Merge the Exif sub-IFD and the base IFD by tag name (base IFD wins), as the reference."""
    try:
        base = img.getexif()
        sub = base.get_ifd(0x8769)
        merged = {ExifTags.TAGS[k]: v for k, v in sub.items() if k in ExifTags.TAGS}
        merged.update(
            {TiffTags.TAGS_V2[k].name: v for k, v in base.items() if k in TiffTags.TAGS_V2}
        )
    except Exception:  # corrupt EXIF: the pixels are still fine
        return {}
    return merged


#: ``GPano:ProjectionType`` as an XMP attribute or element, e.g. ``="equirectangular"``.
_GPANO_PROJECTION = re.compile(rb"GPano:ProjectionType\s*(?:=\s*[\"']|>)\s*([A-Za-z_-]{1,40})")
#: Bytes of an XMP packet searched for it (real packets are a few KiB).
_MAX_XMP_BYTES = 1 << 20


def _gpano_projection(img: Image.Image) -> str | None:
    """The GPano ``ProjectionType`` of the image's XMP packet (lower case), if any.

    Pillow keeps XMP as ``info["xmp"]`` (JPEG, WebP, HEIF) or the PNG text chunk
    ``XML:com.adobe.xmp``; older JPEG readers only list the APP1 segment.
    """
    packets: list[bytes] = []
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = img.info.get(key)
        if isinstance(value, str):
            value = value.encode("utf-8", "replace")
        if isinstance(value, (bytes, bytearray)):
            packets.append(bytes(value[:_MAX_XMP_BYTES]))
    for marker, segment in getattr(img, "applist", []):
        if marker == "APP1" and segment.startswith(b"http://ns.adobe.com/xap/1.0/"):
            packets.append(segment[:_MAX_XMP_BYTES])
    for packet in packets:
        match = _GPANO_PROJECTION.search(packet)
        if match:
            return match.group(1).decode("ascii").lower()
    return None


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """H x W x 3 array: stack grey, drop alpha without compositing, keep 16-bit grey."""
    mode = img.mode
    if mode in ("RGB", "RGBA", "RGBX"):
        return _by_strips(img, np.uint8, lambda strip: np.asarray(strip)[:, :, :3])
    if mode == "L":
        return _by_strips(img, np.uint8, lambda strip: np.asarray(strip)[:, :, None])
    if mode == "LA":
        return _by_strips(img, np.uint8, lambda strip: np.asarray(strip.getchannel(0))[:, :, None])
    if mode == "1":
        return _by_strips(img, np.uint8, lambda strip: np.asarray(strip.convert("L"))[:, :, None])
    if mode in ("P", "PA"):
        lut = _palette_rgb(img)
        return _by_strips(img, np.uint8, lambda strip: lut[_palette_indices(strip)])
    if mode.startswith("I;16"):
        return _by_strips(img, np.uint16, lambda strip: np.asarray(strip)[:, :, None])
    if mode in ("I", "F"):
        # Two passes by strips: the scale depends on the maximum of the whole image.
        peak = max(_clean_wide(np.asarray(strip)).max(initial=0.0) for strip in _strips(img))
        return _by_strips(
            img, np.uint16, lambda strip: _wide_to_uint16(np.asarray(strip), peak)[:, :, None]
        )
    # CMYK, YCbCr, LAB, HSV, premultiplied modes ...
    return _by_strips(img, np.uint8, lambda strip: np.asarray(strip.convert("RGB")))


_STRIP_ROWS = 256


def _by_strips(
    img: Image.Image, dtype: type, to_rgb: Callable[[Image.Image], np.ndarray]
) -> np.ndarray:
    """Fill a writable H x W x 3 ``dtype`` array ``_STRIP_ROWS`` rows at a time.

    Converting the whole image at once would hold Pillow's buffer, a bytes copy of it, its
    joined chunks and our copy together; by strips only Pillow's buffer and the output
    are whole-image sized (benchmarks/bench_decode_memory.py).
    """
    width, height = img.size
    out: np.ndarray = np.empty((height, width, 3), dtype=dtype)
    for top, strip in zip(range(0, height, _STRIP_ROWS), _strips(img), strict=True):
        out[top : top + strip.height] = to_rgb(strip)
    return out


def _strips(img: Image.Image) -> Iterator[Image.Image]:
    """``img`` as consecutive full-width strips of ``_STRIP_ROWS`` rows, top to bottom."""
    width, height = img.size
    for top in range(0, height, _STRIP_ROWS):
        yield img.crop((0, top, width, min(height, top + _STRIP_ROWS)))


def _palette_rgb(img: Image.Image) -> np.ndarray:
    """The 256 x 3 RGB lookup table of a ``P``/``PA`` image: what ``convert("RGBA")``
    gives each index, alpha aside (missing entries are black, as in Pillow)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    colors = np.asarray(img.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(colors)] = colors
    return lut


def _palette_indices(strip: Image.Image) -> np.ndarray:
    indices = np.asarray(strip)
    return indices[:, :, 0] if indices.ndim == 3 else indices  # PA: (index, alpha)


def _wide_to_uint16(values: np.ndarray, peak: float | None = None) -> np.ndarray:
    """Map 32-bit ``I`` / ``F`` data into uint16.

    Negative values and NaN become 0. Values already in the natural range (0..65535 for
    integers, 0..1 for floats) map linearly onto 0..65535; otherwise the image is divided
    by its maximum first (``peak``: of the whole image when ``values`` is a strip of it),
    so that maximum becomes 65535.
    """
    data = _clean_wide(values)
    top = 65535.0 if values.dtype.kind in "iu" else 1.0
    if peak is None:
        peak = float(data.max(initial=0.0))
    if peak > top:
        data *= top / peak
    data *= 65535.0 / top
    np.rint(data, out=data)
    return data.astype(np.uint16)


def _clean_wide(values: np.ndarray) -> np.ndarray:
    """``values`` as float64 with NaN, infinities and negatives replaced by 0."""
    data = values.astype(np.float64)
    np.nan_to_num(data, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(data, 0.0, None, out=data)
    return data


def _apply_orientation(pixels: np.ndarray, orientation: object) -> np.ndarray:
    """Apply EXIF orientations 3, 6 and 8 only (the reference ignores mirrored ones)."""
    turns = _ROT90_TURNS.get(orientation) if isinstance(orientation, int) else None
    if not turns:
        return pixels
    return np.ascontiguousarray(np.rot90(pixels, turns))


def _focal_from_exif(exif: dict[str, Any]) -> tuple[float, FocalSource, str | None]:
    """35 mm-equivalent focal length from EXIF, with the reference's fallbacks.

    Returns ``(focal, source, warning)``: a value whose 35 mm equivalent is outside the
    accepted range is skipped like a missing one, and ``warning`` names it.
    """
    skipped = []
    f35 = _as_float(exif.get("FocalLengthIn35mmFilm", exif.get("FocalLenIn35mmFilm")))
    if f35 is not None and f35 >= 1:
        if _focal_in_range(f35):
            return f35, "exif_35mm", None
        skipped.append(f"FocalLengthIn35mmFilm {f35:g} mm")
    focal = _as_float(exif.get("FocalLength"))
    result: tuple[float, FocalSource] = (_DEFAULT_FOCAL_MM, "default")
    if focal is not None and focal > 0:
        equivalent = focal * 8.4 if focal < 10.0 else focal
        if _focal_in_range(equivalent):
            result = (equivalent, "exif_focal_length")
        else:
            skipped.append(f"FocalLength {focal:g} mm")
    warning = None
    if skipped:
        warning = (
            f"ignored the EXIF {' and '.join(skipped)} (outside {MIN_FOCAL_MM:g}-"
            f"{MAX_FOCAL_MM:g} mm, 35 mm equivalent); used {result[0]:g} mm ({result[1]})"
        )
    return result[0], result[1], warning


def _as_float(value: object) -> float | None:
    """EXIF value (int, IFDRational, ...) as a finite float, or None."""
    if value is None:
        return None
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return result if math.isfinite(result) else None
