"""``mlsharp.names``: every client-given name made plain, printable and bounded by bytes."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from mlsharp.names import MAX_NAME_BYTES, content_disposition, safe_name, safe_stem


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("photos\\2024\\a.jpg", "a.jpg"),  # a zip made on Windows
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\b.png", "b.png"),
        ("a\x00b\nc\x1b[0md.jpg", "abc[0md.jpg"),
        ("my\u200bphoto\u2028.jpg", "myphoto.jpg"),  # zero-width space, line separator
        ("evil\u202egpj.exe", "evilgpj.exe"),  # a right-to-left override
        ("bad\udcff.jpg", "bad.jpg"),  # a lone surrogate (an undecodable byte)
        ("Cafe\u0301.jpg", "Café.jpg"),  # decomposed (macOS) -> composed
        ("  spaced .jpg  ", "spaced .jpg"),
        ("", "image"),
        (None, "image"),
        ("..", "image"),
        ("dir/", "image"),
        ("\x00\x01", "image"),
    ],
)
def test_safe_name(raw, expected) -> None:
    assert safe_name(raw) == expected


def test_long_names_are_cut_by_bytes_at_a_character_boundary() -> None:
    """77 CJK characters (231 bytes) + ".jpg": cut to the byte budget, extension kept."""
    name = safe_name("写" * 77 + ".jpg")
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name == "写" * ((MAX_NAME_BYTES - 4) // 3) + ".jpg"
    emoji = safe_name("😀" * 100)  # four bytes each, no extension
    assert len(emoji.encode()) <= MAX_NAME_BYTES and set(emoji) == {"😀"}
    odd = safe_name("a" * 300 + "." + "b" * 40)  # an "extension" too long to keep
    assert len(odd.encode()) == MAX_NAME_BYTES and odd == "a" * MAX_NAME_BYTES
    assert safe_name("x" * 50, max_bytes=10) == "x" * 10


def test_safe_stem() -> None:
    assert safe_stem("photo.jpg") == "photo"
    assert safe_stem("archive.tar.gz") == "archive.tar"
    assert safe_stem(".hidden") == ".hidden"
    assert safe_stem("folder\\shot.HEIC") == "shot"
    assert safe_stem("") == "scene"
    long_stem = safe_stem("写" * 77 + ".jpg")
    # The longest output suffix plus the temporary suffix of an atomic write still fits
    # in a 255-byte file name.
    assert len(long_stem.encode()) + len(".depth.preview.png") + len(".tmp-") + 16 < 255


def test_content_disposition() -> None:
    assert content_disposition("photo.ply") == 'attachment; filename="photo.ply"'
    value = content_disposition('写真 "1".ply')
    assert value.isascii()
    assert value.startswith('attachment; filename="')
    assert unquote(value.split("filename*=UTF-8''", 1)[1]) == '写真 "1".ply'
    assert '"1"' not in value.split(";")[1]  # quotes never end the ASCII parameter early
    assert "\n" not in content_disposition("a\r\nSet-Cookie: x.ply")
