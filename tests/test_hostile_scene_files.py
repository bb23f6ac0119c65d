"""Hostile or broken ``.glb``, ``.sog`` and ``.spz`` files: every reader answers with one
:class:`SceneFormatError` (a one-line CLI error), never a stack trace, and never decodes
more splats than the file can hold or mlsharp reads at all.

``mlsharp convert`` and ``mlsharp render`` read files users hand them; the service reads
only its own results. The well-formed round trips live in tests/test_new_formats.py.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mlsharp import splat
from mlsharp.splat import common
from mlsharp.splat.common import SceneFormatError
from mlsharp.splat.gltf import glb_bytes
from mlsharp.splat.sog import SOG_FILES, sog_bytes
from mlsharp.splat.spz import spz_bytes
from tests.test_convert import mlsharp, one_error_line
from tests.test_formats import random_scene

# --------------------------------------------------------------------------------------
# .glb: a JSON document anyone can write
# --------------------------------------------------------------------------------------

GOOD_GLB = glb_bytes(random_scene(20))
(_JSON_LENGTH,) = struct.unpack_from("<I", GOOD_GLB, 12)
GOOD_DOCUMENT: dict[str, Any] = json.loads(GOOD_GLB[20 : 20 + _JSON_LENGTH])
BINARY_CHUNK = GOOD_GLB[20 + _JSON_LENGTH :]


def glb_with(text: bytes) -> bytes:
    """``GOOD_GLB`` with its JSON chunk replaced by ``text``."""
    text += b" " * (-len(text) % 4)
    header = struct.pack("<4sII", b"glTF", 2, 20 + len(text) + len(BINARY_CHUNK))
    return header + struct.pack("<II", len(text), 0x4E4F534A) + text + BINARY_CHUNK


def edited(change: Callable[[dict[str, Any]], object]) -> bytes:
    """``GOOD_GLB`` with ``change`` applied to a copy of its JSON document."""
    document = json.loads(json.dumps(GOOD_DOCUMENT))
    change(document)
    return glb_with(json.dumps(document).encode())


def _primitive(document: dict[str, Any]) -> dict[str, Any]:
    return document["meshes"][0]["primitives"][0]


def _empty_accessor_past_its_view(document: dict[str, Any]) -> None:
    for accessor in document["accessors"]:
        accessor["count"] = 0
    document["accessors"][1]["byteOffset"] = 10**6


HOSTILE_GLB = {
    "nested 100,000 deep": lambda: glb_with(b"[" * 100_000),
    "meshes a string": lambda: edited(lambda d: d.update(meshes="abc")),
    "primitives a number": lambda: edited(lambda d: d["meshes"][0].update(primitives=5)),
    "extensions a list": lambda: edited(lambda d: _primitive(d).update(extensions=[1])),
    "accessor type a list": lambda: edited(lambda d: d["accessors"][1].update(type=["VEC4"])),
    "accessor type an object": lambda: edited(lambda d: d["accessors"][1].update(type={})),
    "empty accessor past its view": lambda: edited(_empty_accessor_past_its_view),
    "count true": lambda: edited(lambda d: d["accessors"][0].update(count=True)),
}


@pytest.mark.parametrize("case", list(HOSTILE_GLB))
def test_glb_with_a_malformed_document_is_one_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.glb"
    path.write_bytes(HOSTILE_GLB[case]())
    with pytest.raises(SceneFormatError, match=r"not a readable \.glb"):
        splat.read(path)


def test_glb_camera_ignores_non_finite_and_absurd_values(tmp_path: Path) -> None:
    # JSON parsers accept Infinity; a focal length of infinity or a width of 1e308 * 480
    # pixels must fall back to what the rest of the camera (or the default) says.
    yfov = GOOD_DOCUMENT["cameras"][0]["perspective"]["yfov"]
    infinite = json.dumps(GOOD_DOCUMENT).replace('"focal_px":', '"focal_px":Infinity,"was":')
    path = tmp_path / "inf.glb"
    path.write_bytes(glb_with(infinite.encode()))
    scene = splat.read(path)
    assert scene.focal_px == pytest.approx(480 / (2 * np.tan(yfov / 2)))
    assert scene.image_size == (round(480 * 64 / 48), 480)

    def wide(document: dict[str, Any]) -> None:
        del document["cameras"][0]["extras"]
        document["cameras"][0]["perspective"]["aspectRatio"] = 1e308

    path.write_bytes(edited(wide))
    assert splat.read(path).image_size == (640, 480)
    path.write_bytes(edited(lambda d: d.update(cameras="none")))
    assert splat.read(path).focal_px == common.DEFAULT_FOCAL_PX


def test_glb_count_reads_the_header_and_json_alone(tmp_path: Path) -> None:
    path = tmp_path / "head.glb"
    path.write_bytes(GOOD_GLB[: 20 + _JSON_LENGTH])  # the binary chunk cut off
    assert splat.count(path) == 20
    with pytest.raises(SceneFormatError, match="truncated"):
        splat.read(path)


def test_convert_of_a_malformed_glb_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.glb").write_bytes(HOSTILE_GLB["meshes a string"]())
    result = mlsharp("convert", "bad.glb", "out.ply", cwd=tmp_path)
    assert result.returncode == 3
    assert "not a readable .glb" in one_error_line(result)
    assert not (tmp_path / "out.ply").exists()


# --------------------------------------------------------------------------------------
# .sog: a zip of a JSON file and WebP images
# --------------------------------------------------------------------------------------


def sog_entries(n: int = 50) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(sog_bytes(random_scene(n)))) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def with_meta(**changes: object) -> bytes:
    entries = sog_entries()
    meta = json.loads(entries["meta.json"])
    meta.update(changes)
    return zipped({**entries, "meta.json": json.dumps(meta).encode()})


def _scales_book(value: float) -> bytes:
    meta = json.loads(sog_entries()["meta.json"])
    return with_meta(scales={**meta["scales"], "codebook": [value] * 256})


HOSTILE_SOG = {
    "meta.json is not JSON": lambda: zipped({**sog_entries(), "meta.json": b"[" * 100_000}),
    "no valid count": lambda: with_meta(count=True),
    "out-of-range bounds": lambda: with_meta(
        means={"mins": [-1e308] * 3, "maxs": [1e308] * 3, "files": ["means_l.webp", "means_u.webp"]}
    ),
    "scales codebook is out of range": lambda: _scales_book(1e308),
}


@pytest.mark.parametrize("message", list(HOSTILE_SOG))
def test_sog_with_hostile_meta_is_one_error(tmp_path: Path, message: str) -> None:
    path = tmp_path / "bad.sog"
    path.write_bytes(HOSTILE_SOG[message]())
    with pytest.raises(SceneFormatError, match=message):
        splat.read(path)


def test_sog_claiming_more_splats_than_its_bytes_is_refused_before_decoding(
    tmp_path: Path,
) -> None:
    # Five flat 512 x 512 lossless WebPs are a few hundred bytes each but hold 262,144
    # texels: a small file would make the reader allocate for a quarter million splats.
    count = 512 * 512
    flat = io.BytesIO()
    Image.new("RGBA", (512, 512), (0, 0, 0, 255)).save(flat, "WEBP", lossless=True)
    entries = sog_entries()
    meta = json.loads(entries["meta.json"])
    meta["count"] = count
    bomb = zipped(
        {"meta.json": json.dumps(meta).encode(), **dict.fromkeys(SOG_FILES, flat.getvalue())}
    )
    assert len(bomb) < count // 10
    path = tmp_path / "bomb.sog"
    path.write_bytes(bomb)
    with pytest.raises(SceneFormatError, match="more than the file can hold"):
        splat.read(path)


# --------------------------------------------------------------------------------------
# The cap on splats decoded from any compressed file
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "encode"),
    [
        (".spz", lambda scene: spz_bytes(scene, version=2)),
        (".spz", lambda scene: spz_bytes(scene, version=4)),
        (".sog", sog_bytes),
    ],
    ids=["spz-v2", "spz-v4", "sog"],
)
def test_compressed_readers_stop_at_the_splat_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, encode: Callable
) -> None:
    path = tmp_path / f"scene{suffix}"
    path.write_bytes(encode(random_scene(300)))
    assert len(splat.read(path)) == 300
    monkeypatch.setattr(common, "MAX_READ_SPLATS", 299)
    with pytest.raises(SceneFormatError, match="more than mlsharp reads"):
        splat.read(path)


# --------------------------------------------------------------------------------------
# What our writers produce stays readable: no splats, non-finite values
# --------------------------------------------------------------------------------------

WRITERS = [
    ("ply", {}),
    ("ply-standard", {}),
    ("splat", {}),
    ("spz", {"version": 2}),
    ("spz", {"version": 3}),
    ("spz", {"version": 4}),
    ("sog", {}),
    ("glb", {"compression": "none"}),
    ("glb", {"compression": "spz"}),
]


@pytest.mark.parametrize(("fmt", "options"), WRITERS, ids=lambda v: str(v))
def test_a_scene_without_splats_round_trips(tmp_path: Path, fmt: str, options: dict) -> None:
    # --min-opacity can keep nothing: every writer must still write a file it reads back.
    empty = splat.reduce_density(random_scene(40), splat.Density(min_opacity=0.99))
    assert len(empty) == 0
    path = splat.write(empty, tmp_path / f"empty{splat.SUFFIXES[fmt]}", fmt, **options)
    assert len(splat.read(path)) == splat.count(path) == 0


def test_sog_writer_keeps_infinite_values_readable(tmp_path: Path) -> None:
    scene = random_scene(200)
    scene.colors[:3] = [np.inf, -np.inf, np.nan]
    scene.positions[3] = [np.inf, 1.0, 2.0]
    scene.scales[4] = np.inf
    path = splat.write(scene, tmp_path / "odd.sog", "sog")
    back = splat.read(path)
    assert len(back) == 200
    for values in (back.positions, back.scales, back.colors):
        assert np.isfinite(values).all()


def test_spz_v4_harmonics_are_not_decompressed(tmp_path: Path) -> None:
    # Higher-order harmonics are ignored (in every version); in version 4 they are their own
    # zstd stream of up to 72 bytes per splat, which is skipped, not inflated for nothing.
    scene = random_scene(100)
    data = spz_bytes(scene, version=4)
    table = data[32 : 32 + 5 * 16]
    frames = data[32 + 5 * 16 :]
    harmonics = b"not even zstd"  # never decompressed, so never found out
    header = bytearray(data[:32])
    header[12], header[15] = 3, 6  # SH degree 3, six streams
    entry = struct.pack("<QQ", len(harmonics), 100 * 3 * 15)
    path = tmp_path / "sh3.spz"
    path.write_bytes(bytes(header) + table + entry + frames + harmonics)
    back = splat.read(path)
    plain = tmp_path / "plain.spz"
    plain.write_bytes(data)
    np.testing.assert_array_equal(back.positions, splat.read(plain).positions)
    np.testing.assert_array_equal(back.colors, splat.read(plain).colors)
