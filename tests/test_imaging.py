"""Tests of mlsharp.imaging: real images generated with Pillow at run time, no mocks."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from mlsharp.errors import ConfigError, ImageTooLarge, InvalidImage, ServiceUnavailable
from mlsharp.imaging import (
    DEFAULT_MAX_PIXELS,
    MAX_FOCAL_MM,
    MIN_FOCAL_MM,
    SUPPORTED_EXTENSIONS,
    DecodeBudget,
    LoadedImage,
    _to_rgb_array,  # the conversion itself, for modes no file holds
    decode_bytes,
    focal_length_px,
    is_supported_path,
    load_image,
)

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT_CANDIDATES = (
    REPO / "tests" / "data" / "parity" / "images" / "astronaut.jpg",
    REPO.parent / "shared" / "reference" / "parity" / "images" / "astronaut.jpg",
)
ASTRONAUT_SHA256 = "5104770a0f0a0bcfe7334f334a77400038f4349c4e5725b08101d6eae09779fe"
DIAG_35 = np.sqrt(36**2 + 24**2)


# -- helpers ---------------------------------------------------------------------------


def pattern(width: int = 24, height: int = 16) -> np.ndarray:
    """An asymmetric RGB test image: every pixel distinct, smooth enough for JPEG."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 7 * 30])
    return np.ascontiguousarray(rgb.transpose(1, 2, 0).astype(np.uint8))


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_exif(orientation: int = 1, f35: object = None, focal: object = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation  # a base-IFD tag, else Pillow's PNG writer drops empty EXIF
    sub = exif.get_ifd(0x8769)
    if f35 is not None:
        sub[0xA405] = f35  # FocalLengthIn35mmFilm
    if focal is not None:
        sub[0x920A] = focal  # FocalLength
    return exif


def raw_png(width: int, height: int, color_type: int, bit_depth: int, rows: bytes) -> bytes:
    """A minimal PNG written by hand (for 16-bit RGB and fake huge headers)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def expected_f_px(f35: float, width: int, height: int) -> float:
    return float(f35 * np.sqrt(width**2.0 + height**2.0) / DIAG_35)


def assert_one_line_error(exc: pytest.ExceptionInfo, name: str) -> None:
    message = str(exc.value)
    assert name in message
    assert "\n" not in message and "\r" not in message


# -- reference parity ------------------------------------------------------------------


def test_astronaut_fixture_matches_reference():
    path = next((p for p in ASTRONAUT_CANDIDATES if p.is_file()), None)
    if path is None:
        pytest.skip("astronaut.jpg parity fixture not found")
    img = load_image(path)
    assert img.pixels.shape == (512, 512, 3) and img.pixels.dtype == np.uint8
    assert hashlib.sha256(img.pixels.tobytes()).hexdigest() == ASTRONAUT_SHA256
    assert img.focal_px == 836.7621765895851
    assert img.focal_mm_35 == 50.0 and img.focal_source == "exif_35mm"
    assert img.name == "astronaut.jpg" and img.format == "JPEG"
    assert (img.width, img.height) == (512, 512)


def test_to_float32_bit_matches_torch():
    torch = pytest.importorskip("torch")
    img = load_image(encode(Image.fromarray(pattern()), "PNG"))
    ours = img.to_float32()
    theirs = (torch.from_numpy(img.pixels).float() / 255.0).numpy()
    assert ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_focal_length_px_formula():
    assert focal_length_px(50, 512, 512) == 836.7621765895851
    assert focal_length_px(30.0, 640, 480) == expected_f_px(30.0, 640, 480)


# -- formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
     ("WEBP", {"lossless": True})],
)  # fmt: skip
def test_lossless_formats_round_trip_exactly(fmt, kwargs):
    rgb = pattern()
    img = load_image(encode(Image.fromarray(rgb), fmt, **kwargs))
    assert img.format == fmt
    assert img.pixels.dtype == np.uint8 and img.pixels.flags.c_contiguous
    assert np.array_equal(img.pixels, rgb)
    assert img.focal_source == "default" and img.focal_mm_35 == 30.0


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_round_trip_approximately(fmt):
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, 255 - x * 2], axis=-1).astype(np.uint8)  # smooth
    img = load_image(encode(Image.fromarray(rgb), fmt, quality=95))
    assert img.pixels.shape == rgb.shape and img.pixels.dtype == np.uint8
    assert np.abs(img.pixels.astype(int) - rgb).mean() < 4


def test_gif_first_frame_via_palette():
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    first = Image.fromarray(np.array([[0, 1, 2], [3, 2, 1]], dtype=np.uint8), "P")
    first.putpalette(palette)
    second = Image.fromarray(np.full((2, 3), 3, dtype=np.uint8), "P")
    second.putpalette(palette)
    data = encode(first, "GIF", save_all=True, append_images=[second])
    img = load_image(data)
    table = np.array(palette[:12], dtype=np.uint8).reshape(4, 3)
    assert img.format == "GIF"
    assert np.array_equal(img.pixels, table[np.array([[0, 1, 2], [3, 2, 1]])])


def test_heic_round_trip_and_orientation():
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    rgb = np.zeros((16, 32, 3), dtype=np.uint8)
    rgb[:8, :8] = (255, 0, 0)
    rgb[8:] = (0, 0, 255)
    try:
        plain = encode(Image.fromarray(rgb), "HEIF", quality=-1)
        rotated = encode(
            Image.fromarray(rgb), "HEIF", quality=-1, exif=make_exif(orientation=6).tobytes()
        )
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        pytest.skip(f"no HEIF encoder available: {exc}")
    img = load_image(plain, name="photo.heic")
    assert img.format == "HEIF" and img.pixels.shape == (16, 32, 3)
    assert np.abs(img.pixels.astype(int) - rgb).max() <= 3
    # libheif applies the rotation itself; it must not be applied a second time.
    img = load_image(rotated)
    assert img.pixels.shape == (32, 16, 3)
    assert img.pixels[0, -1, 0] > 200 and img.pixels[0, 0, 0] < 50


def test_format_detected_by_content_not_extension(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    rgb = pattern()
    path.write_bytes(encode(Image.fromarray(rgb), "PNG"))
    img = load_image(path)
    assert img.format == "PNG" and img.name == "really_a_png.jpg"
    assert np.array_equal(img.pixels, rgb)


def test_unsupported_format_is_invalid_image():
    data = encode(Image.fromarray(pattern()), "PPM")
    with pytest.raises(InvalidImage, match="not a supported image") as exc:
        load_image(data, name="scan.ppm")
    assert_one_line_error(exc, "scan.ppm")


# -- EXIF orientation ------------------------------------------------------------------


def marked_image() -> np.ndarray:
    """4 wide x 2 high: red top-left marker, green top-right, blue bottom-left."""
    rgb = np.full((2, 4, 3), 128, dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 3] = (0, 255, 0)
    rgb[1, 0] = (0, 0, 255)
    return rgb


@pytest.mark.parametrize(
    ("orientation", "shape", "red_at"),
    [(1, (2, 4), (0, 0)), (3, (2, 4), (1, 3)), (6, (4, 2), (0, 1)), (8, (4, 2), (3, 0)),
     (2, (2, 4), (0, 0)), (5, (2, 4), (0, 0)), (7, (2, 4), (0, 0))],
)  # fmt: skip
def test_exif_orientation(orientation, shape, red_at):
    data = encode(Image.fromarray(marked_image()), "PNG", exif=make_exif(orientation))
    img = load_image(data)
    assert img.pixels.shape == (*shape, 3) and img.pixels.flags.c_contiguous
    assert tuple(img.pixels[red_at]) == (255, 0, 0)
    assert (img.height, img.width) == shape


def test_exif_orientation_6_pixel_layout_matches_pillow_rotate_270():
    rgb = marked_image()
    img = load_image(encode(Image.fromarray(rgb), "PNG", exif=make_exif(6)))
    expected = np.asarray(Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(img.pixels, expected)
    # 6 = rotate 90 degrees clockwise: the bottom-left marker ends up top-left.
    assert tuple(img.pixels[0, 0]) == (0, 0, 255)


def test_jpeg_orientation_and_focal_after_rotation():
    rgb = np.zeros((32, 64, 3), dtype=np.uint8)
    rgb[:16, :16] = 255
    data = encode(Image.fromarray(rgb), "JPEG", quality=95, exif=make_exif(8, f35=26))
    img = load_image(data)
    assert (img.width, img.height) == (32, 64)
    assert img.pixels[56, 8].min() > 200 and img.pixels[8, 8].max() < 50
    assert img.focal_px == expected_f_px(26, 32, 64)


# -- focal length ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f35", "focal", "f_mm", "source"),
    [
        (50, None, 50.0, "exif_35mm"),
        (50, TiffImagePlugin.IFDRational(17, 4), 50.0, "exif_35mm"),
        (0, TiffImagePlugin.IFDRational(24, 1), 24.0, "exif_focal_length"),
        (None, TiffImagePlugin.IFDRational(24, 1), 24.0, "exif_focal_length"),
        (None, TiffImagePlugin.IFDRational(17, 4), 4.25 * 8.4, "exif_focal_length"),
        (None, None, 30.0, "default"),
        (None, TiffImagePlugin.IFDRational(1, 0), 30.0, "default"),
    ],
)
def test_focal_from_exif(f35, focal, f_mm, source):
    data = encode(Image.fromarray(pattern(40, 30)), "JPEG", exif=make_exif(1, f35, focal))
    img = load_image(data)
    assert img.focal_source == source
    assert img.focal_mm_35 == f_mm
    assert img.focal_px == expected_f_px(f_mm, 40, 30)


def test_focal_below_10mm_uses_reference_arithmetic():
    exif = make_exif(focal=TiffImagePlugin.IFDRational(17, 4))
    img = load_image(encode(Image.fromarray(pattern(40, 30)), "PNG", exif=exif))
    # 4.25 mm * 8.4 = 35.7 mm; a 40x30 image has a 50 px diagonal.
    assert img.focal_source == "exif_focal_length"
    assert img.focal_mm_35 == 4.25 * 8.4
    assert img.focal_px == pytest.approx(35.7 * 50 / 43.266615305567875, rel=1e-12)


def test_user_focal_overrides_exif():
    data = encode(Image.fromarray(pattern(40, 30)), "JPEG", exif=make_exif(f35=50))
    img = load_image(data, focal_mm=24)
    assert img.focal_source == "user" and img.focal_mm_35 == 24.0
    assert img.focal_px == expected_f_px(24.0, 40, 30)


@pytest.mark.parametrize("bad", [0, -5.0, float("nan"), float("inf"), "wide", True])
def test_invalid_user_focal_is_config_error(bad):
    with pytest.raises(ConfigError, match="focal_mm"):
        load_image(b"not even read", focal_mm=bad)


# -- pixel modes -----------------------------------------------------------------------


def test_grayscale_is_stacked():
    grey = pattern()[:, :, 0]
    img = load_image(encode(Image.fromarray(grey, "L"), "PNG"))
    assert img.pixels.shape == (*grey.shape, 3)
    for c in range(3):
        assert np.array_equal(img.pixels[:, :, c], grey)


def test_la_keeps_grey_and_drops_alpha():
    grey = pattern()[:, :, 0]
    alpha = np.zeros_like(grey)
    la = Image.merge("LA", [Image.fromarray(grey, "L"), Image.fromarray(alpha, "L")])
    img = load_image(encode(la, "PNG"))
    assert np.array_equal(img.pixels, np.dstack((grey, grey, grey)))


def test_rgba_alpha_dropped_without_compositing():
    rgba = np.dstack((pattern(), np.zeros(pattern().shape[:2], dtype=np.uint8)))
    rgba[0, 0, 3] = 255
    img = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert img.pixels.shape == (16, 24, 3)
    assert np.array_equal(img.pixels, rgba[:, :, :3])  # RGB under alpha=0 survives


def test_cmyk_converted_to_rgb():
    cmyk = Image.fromarray(pattern(8, 6)).convert("CMYK")
    img = load_image(encode(cmyk, "TIFF"))
    assert np.array_equal(img.pixels, np.asarray(cmyk.convert("RGB")))


def test_palette_with_transparency():
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), "P")
    pal.putpalette([10, 20, 30, 200, 100, 50, 1, 2, 3] + [0] * (253 * 3))
    img = load_image(encode(pal, "PNG", transparency=1))
    expected = np.array([[[10, 20, 30], [200, 100, 50]], [[1, 2, 3], [200, 100, 50]]])
    assert np.array_equal(img.pixels, expected)


def test_bilevel_image():
    bits = np.array([[True, False, True], [False, True, False]])
    img = load_image(encode(Image.fromarray(bits), "PNG"))
    assert np.array_equal(img.pixels[:, :, 1], bits.astype(np.uint8) * 255)


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B")])
def test_16bit_grey_stays_uint16(fmt, mode):
    grey = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5957 + 3).astype(np.uint16)
    if mode == "I;16B":
        src = Image.frombytes(mode, (4, 3), grey.astype(">u2").tobytes())
    else:
        src = Image.fromarray(grey)
    assert src.mode == mode
    img = load_image(encode(src, fmt))
    assert img.pixels.dtype == np.uint16 and img.pixels.dtype.byteorder in "=|"
    assert np.array_equal(img.pixels, np.dstack((grey, grey, grey)))
    flt = img.to_float32()
    assert flt.dtype == np.float32 and flt.min() >= 0.0 and flt.max() <= 1.0
    assert flt[0, 0, 0] == np.float32(3) / np.float32(65535)


def test_16bit_rgb_png_is_reduced_to_8bit_by_pillow():
    rgb16 = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 3001 + 300).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    img = load_image(raw_png(3, 2, 2, 16, rows))
    assert img.pixels.dtype == np.uint8  # Pillow has no 16-bit RGB mode: high byte kept
    assert np.array_equal(img.pixels, (rgb16.astype(np.uint16) >> 8).astype(np.uint8))


def test_32bit_int_and_float_map_into_uint16():
    ints = Image.fromarray(np.array([[0, 1000], [-5, 65535]], dtype=np.int32), "I")
    img = load_image(encode(ints, "TIFF"))
    assert img.pixels.dtype == np.uint16
    assert img.pixels[:, :, 0].tolist() == [[0, 1000], [0, 65535]]
    floats = Image.fromarray(np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float32), "F")
    img = load_image(encode(floats, "TIFF"))
    assert img.pixels[:, :, 2].tolist() == [[0, 32768], [65535, 0]]
    big = Image.fromarray(np.array([[0.0, 100.0, 200.0]], dtype=np.float32), "F")
    assert load_image(encode(big, "TIFF")).pixels[0, :, 0].tolist() == [0, 32768, 65535]


# -- sources ---------------------------------------------------------------------------


def test_sources_bytes_bytearray_memoryview_and_file_objects(tmp_path):
    rgb = pattern()
    data = encode(Image.fromarray(rgb), "PNG")
    path = tmp_path / "Photo.PNG"
    path.write_bytes(data)
    results = [
        load_image(data),
        load_image(bytearray(data)),
        load_image(memoryview(data)),
        load_image(io.BytesIO(data)),
        load_image(str(path)),
        load_image(path),
    ]
    with path.open("rb") as fh:
        results.append(load_image(fh))
    for res in results:
        assert isinstance(res, LoadedImage) and np.array_equal(res.pixels, rgb)
    assert [r.name for r in results] == [
        "<bytes>", "<bytes>", "<bytes>", "<stream>", "Photo.PNG", "Photo.PNG", "Photo.PNG",
    ]  # fmt: skip
    assert load_image(data, name="upload.png").name == "upload.png"
    assert results[0].pixels.flags.writeable


def test_unsupported_source_type_is_config_error():
    with pytest.raises(ConfigError):
        load_image(12345)  # type: ignore[arg-type]


# -- limits ----------------------------------------------------------------------------


def test_too_many_pixels_rejected_before_decoding():
    # The pixel data is truncated: decoding would fail, so ImageTooLarge proves the limit is
    # checked from the header alone.
    data = encode(Image.fromarray(pattern(64, 48)), "PNG")[:200]
    with pytest.raises(ImageTooLarge, match=r"64x48") as exc:
        load_image(data, max_pixels=1000, name="big.png")
    assert "1,000" in str(exc.value)
    assert_one_line_error(exc, "big.png")
    assert isinstance(exc.value, InvalidImage)


def test_decompression_bomb_headers():
    # 120 MP claimed, no pixel data: over our default limit, under Pillow's hard limit.
    with pytest.raises(ImageTooLarge, match=r"12000x10000 = 120,000,000 pixels") as exc:
        load_image(raw_png(12_000, 10_000, 0, 8, b""), name="bomb.png")
    assert "100,000,000" in str(exc.value)
    # 400 MP claimed: Pillow's own decompression-bomb error, reported as ImageTooLarge.
    with pytest.raises(ImageTooLarge, match=r"exceeds") as exc:
        load_image(raw_png(20_000, 20_000, 0, 8, b""), name="bomb.png", max_pixels=None)
    assert_one_line_error(exc, "bomb.png")


def test_below_our_limit_no_pillow_bomb_warning():
    assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS < 95_000_000
    header_only = raw_png(10_000, 9_500, 0, 8, b"")  # above Pillow's warning threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidImage) as exc:
            load_image(header_only, name="huge.png", max_pixels=DEFAULT_MAX_PIXELS)
    assert not isinstance(exc.value, ImageTooLarge)


def test_max_bytes(tmp_path):
    data = encode(Image.fromarray(pattern()), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for source in (data, path, io.BytesIO(data)):
        with pytest.raises(ImageTooLarge, match="bytes"):
            load_image(source, max_bytes=len(data) - 1, name="a.png")
        assert load_image(source if not isinstance(source, io.BytesIO) else io.BytesIO(data),
                          max_bytes=len(data)).width == 24  # fmt: skip


@pytest.mark.parametrize("kwargs", [{"max_pixels": 0}, {"max_bytes": -1}, {"max_pixels": 2.5}])
def test_invalid_limits_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        load_image(b"x", **kwargs)


# -- bad input -------------------------------------------------------------------------


def test_truncated_jpeg(tmp_path):
    data = encode(Image.fromarray(pattern(64, 48)), "JPEG", quality=90)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImage, match=r"^cannot read photo\.jpg: ") as exc:
        load_image(path)
    assert not isinstance(exc.value, ImageTooLarge)
    assert_one_line_error(exc, "photo.jpg")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InvalidImage, match="empty") as exc:
        load_image(path)
    assert_one_line_error(exc, "empty.png")
    with pytest.raises(InvalidImage, match="empty"):
        load_image(b"")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_text("this is not a photo\nat all\n")
    with pytest.raises(InvalidImage) as exc:
        load_image(path)
    assert str(exc.value).startswith("cannot read x.jpg: ")
    assert_one_line_error(exc, "x.jpg")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InvalidImage) as exc:
        load_image(tmp_path / "nope.jpg")
    assert_one_line_error(exc, "nope.jpg")
    with pytest.raises(InvalidImage):
        load_image(tmp_path)


def test_corrupt_png_body(tmp_path):
    data = bytearray(encode(Image.fromarray(pattern(64, 48)), "PNG"))
    data[60:80] = b"\xff" * 20  # damage the compressed stream
    with pytest.raises(InvalidImage) as exc:
        load_image(bytes(data), name="bad.png")
    assert_one_line_error(exc, "bad.png")


def test_name_with_newline_is_sanitised():
    with pytest.raises(InvalidImage) as exc:
        load_image(b"junk", name="evil\nname.jpg")
    assert "\n" not in str(exc.value)


# -- folder scanning helpers -----------------------------------------------------------


def test_supported_extensions():
    assert set(SUPPORTED_EXTENSIONS) == {
        ".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif",
    }  # fmt: skip
    assert all(ext == ext.lower() and ext.startswith(".") for ext in SUPPORTED_EXTENSIONS)
    assert is_supported_path("IMG_0001.HEIC")
    assert is_supported_path(Path("a/b/photo.JpEg"))
    assert not is_supported_path("notes.txt")
    assert not is_supported_path("jpg")
    assert not is_supported_path("archive.png.zip")


# -- focal length ranges (issue 12) ------------------------------------------------------


@pytest.mark.parametrize("bad", [1e-300, 0.5, 10_000.5, 1e300])
def test_user_focal_outside_the_range_is_config_error(bad):
    """1e-300 made the output non-finite (and failed its whole batch): refused at once."""
    with pytest.raises(ConfigError, match=r"from 1 to 10000 mm"):
        load_image(b"not even read", focal_mm=bad)


@pytest.mark.parametrize("edge", [MIN_FOCAL_MM, MAX_FOCAL_MM])
def test_user_focal_at_the_ends_of_the_range(edge):
    img = load_image(encode(Image.fromarray(pattern(40, 30)), "PNG"), focal_mm=edge)
    assert img.focal_mm_35 == edge and img.focal_warning is None


@pytest.mark.parametrize(
    ("f35", "focal", "f_mm", "source", "ignored"),
    [
        # An absurd 35 mm value is skipped for a sane FocalLength ...
        (65535, TiffImagePlugin.IFDRational(24, 1), 24.0, "exif_focal_length", "65535"),
        # ... or for the default when nothing else is sane.
        (65535, None, 30.0, "default", "FocalLengthIn35mmFilm 65535"),
        (None, TiffImagePlugin.IFDRational(1, 4_000_000_000), 30.0, "default", "FocalLength"),
        (None, TiffImagePlugin.IFDRational(20_000, 1), 30.0, "default", "FocalLength 20000"),
    ],
)
def test_absurd_exif_focal_falls_back_with_a_warning(f35, focal, f_mm, source, ignored):
    data = encode(Image.fromarray(pattern(40, 30)), "JPEG", exif=make_exif(1, f35, focal))
    img = load_image(data)
    assert (img.focal_mm_35, img.focal_source) == (f_mm, source)
    assert img.focal_px == expected_f_px(f_mm, 40, 30)
    assert img.focal_warning is not None and ignored in img.focal_warning
    assert "\n" not in img.focal_warning


def test_sane_exif_focal_has_no_warning():
    data = encode(Image.fromarray(pattern(40, 30)), "JPEG", exif=make_exif(1, 26, None))
    assert load_image(data).focal_warning is None


# -- decode memory (issue 12) ------------------------------------------------------------


def test_decode_bytes_depend_on_mode_and_format():
    """Per pixel: palette/grey < 8-bit RGB < 16-bit < 32-bit; WebP and HEIC decoders add
    a buffer of their own (figures measured by benchmarks/bench_decode_memory.py)."""
    per_pixel = {
        (mode, fmt): decode_bytes(mode, 100, 10, fmt) / 1000
        for mode, fmt in [("P", "PNG"), ("RGB", "JPEG"), ("I;16B", "TIFF"), ("F", "TIFF"),
                          ("RGB", "WEBP"), ("RGB", "HEIF")]
    }  # fmt: skip
    assert per_pixel[("P", "PNG")] < per_pixel[("RGB", "JPEG")] < per_pixel[("I;16B", "TIFF")]
    assert per_pixel[("I;16B", "TIFF")] < per_pixel[("F", "TIFF")]
    assert per_pixel[("RGB", "JPEG")] < per_pixel[("RGB", "WEBP")] < per_pixel[("RGB", "HEIF")]


def test_max_decode_bytes_refuses_from_the_header():
    """Truncated pixel data: ImageTooLarge proves the estimate comes from the header."""
    data = raw_png(2000, 2000, 0, 16, b"")  # 16-bit grey, no pixel data
    needed = decode_bytes("I;16B", 2000, 2000)
    with pytest.raises(ImageTooLarge, match=r"needs about \d+ MiB of memory") as exc:
        load_image(data, max_decode_bytes=needed - 1, name="deep.png")
    assert_one_line_error(exc, "deep.png")
    with pytest.raises(InvalidImage) as exc:  # within the limit: decoding fails later
        load_image(data, max_decode_bytes=needed, name="deep.png")
    assert not isinstance(exc.value, ImageTooLarge)


def test_decode_budget_bounds_concurrent_decodes():
    """Two photos that do not fit the budget together are decoded one after the other;
    one that never fits is ImageTooLarge; a full budget ends in ServiceUnavailable."""
    data = encode(Image.fromarray(pattern(400, 300)), "PNG")
    each = decode_bytes("RGB", 400, 300, "PNG")
    budget = DecodeBudget(each + each // 2, wait_seconds=30)
    peaks: list[int] = []
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with budget.reserve(each, "held"):
            entered.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(30)
    waiter = threading.Thread(
        target=lambda: peaks.append(load_image(data, decode_budget=budget).width)
    )
    waiter.start()
    time.sleep(0.2)
    assert peaks == [] and budget.in_use == each  # waiting for room
    release.set()
    holder.join(30)
    waiter.join(30)
    assert peaks == [400] and budget.in_use == 0
    with pytest.raises(ImageTooLarge, match="memory"):
        load_image(data, decode_budget=DecodeBudget(each - 1))
    impatient = DecodeBudget(each, wait_seconds=0.05)
    with impatient.reserve(1, "other"), pytest.raises(ServiceUnavailable, match="retry"):
        load_image(data, decode_budget=impatient)
    assert impatient.in_use == 0


@pytest.mark.parametrize(
    "mode", ["RGB", "RGBA", "L", "LA", "1", "P", "PA", "I;16", "I", "F", "CMYK"]
)
def test_decoding_by_strips_matches_whole_image_conversion(mode):
    """Images taller than a strip (with the maximum of an I/F image in a late strip)
    come out exactly as converting the whole image at once did."""
    rng = np.random.default_rng(7)
    height, width = 700, 37
    if mode in ("I", "F"):
        values = rng.uniform(-5, 900, (height, width))
        values[650, 3] = 70_000 if mode == "I" else 3.5  # the peak, in the last strip
        image = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode)
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode in ("P", "PA"):
        image = Image.fromarray(rng.integers(0, 200, (height, width), dtype=np.uint8), "P")
        image.putpalette(rng.integers(0, 256, 3 * 180).tolist())  # short: some indices black
        image = image.convert(mode) if mode == "PA" else image
    else:
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        image = Image.fromarray(rgba, "RGBA").convert(mode)
    assert image.mode == mode
    expected = _whole_image_reference(image)
    converted = _to_rgb_array(image)
    assert converted.dtype == expected.dtype and np.array_equal(converted, expected)
    if mode != "PA":  # no format here writes PA; the others go through a file too
        fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
        loaded = load_image(encode(image, fmt))
        reread = Image.open(io.BytesIO(encode(image, fmt)))
        reread.load()
        assert np.array_equal(loaded.pixels, _whole_image_reference(reread))
        assert loaded.pixels.flags.writeable and loaded.pixels.flags.c_contiguous


def _whole_image_reference(img: Image.Image) -> np.ndarray:
    """What the conversion gave before it went by strips (the same rules, whole image)."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return np.asarray(img)[:, :, :3]
    if mode in ("L", "LA"):
        grey = np.asarray(img.getchannel(0))
    elif mode == "1":
        grey = np.asarray(img.convert("L"))
    elif mode in ("P", "PA"):
        return np.asarray(img.convert("RGBA"))[:, :, :3]
    elif mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.uint16)
    elif mode in ("I", "F"):
        values = np.asarray(img)
        data = np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), 0.0, None)
        top = 65535.0 if values.dtype.kind in "iu" else 1.0
        peak = float(data.max(initial=0.0))
        if peak > top:
            data = data * (top / peak)
        grey = np.rint(data * (65535.0 / top)).astype(np.uint16)
    else:
        return np.asarray(img.convert("RGB"))
    return np.dstack((grey, grey, grey))
