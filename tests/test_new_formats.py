"""glb (KHR_gaussian_splatting), SOG and SPZ version 4: round trips, the exact mapping the
docs promise, and unreadable files refused with one clear error.

Third-party readers check the same files in tests/independent and tests/e2e.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlsharp import splat
from mlsharp.errors import ConfigError
from mlsharp.splat.common import SceneFormatError, srgb_colors
from mlsharp.splat.gltf import EXTENSION, SPZ_EXTENSION, glb_bytes
from mlsharp.splat.ply import SH_C0
from mlsharp.splat.sog import image_size_for, sog_bytes
from mlsharp.splat.spz import spz_bytes
from tests.test_formats import random_scene


def glb_document(data: bytes) -> dict:
    (length,) = struct.unpack_from("<I", data, 12)
    return json.loads(data[20 : 20 + length])


def nearest(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    distance = ((found[:, None, :] - expected[None, :, :]) ** 2).sum(axis=2)
    pairs = distance.argmin(axis=1)
    assert len(np.unique(pairs)) == len(expected)
    return pairs


# --------------------------------------------------------------------------------------
# glb
# --------------------------------------------------------------------------------------


def test_glb_maps_our_gaussians_as_documented(tmp_path: Path) -> None:
    scene = random_scene(300)
    data = glb_bytes(scene)
    document = glb_document(data)
    primitive = document["meshes"][0]["primitives"][0]
    assert primitive["mode"] == 0
    assert primitive["extensions"][EXTENSION] == {
        "kernel": "ellipse",
        "colorSpace": "srgb_rec709_display",
        "projection": "perspective",
        "sortingMethod": "cameraDistance",
    }
    (bin_length,) = struct.unpack_from("<I", data, 20 + struct.unpack_from("<I", data, 12)[0])
    binary = data[-bin_length:]

    def attribute(name: str, dtype: str, width: int) -> np.ndarray:
        accessor = document["accessors"][primitive["attributes"][name]]
        view = document["bufferViews"][accessor["bufferView"]]
        raw = binary[view["byteOffset"] : view["byteOffset"] + view["byteLength"]]
        return np.frombuffer(raw, dtype=dtype).reshape(len(scene), width)

    # y up: (x, y, z) -> (x, -y, -z); quaternions (x, y, z, w) with (w, x, -y, -z).
    positions = attribute("POSITION", "<f4", 3)
    np.testing.assert_allclose(positions, scene.positions * [1, -1, -1], atol=1e-6)
    xyzw = attribute(f"{EXTENSION}:ROTATION", "<f4", 4)
    q = scene.rotations / np.linalg.norm(scene.rotations, axis=1, keepdims=True)
    np.testing.assert_allclose(xyzw, q[:, [1, 2, 3, 0]] * [1, -1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(attribute(f"{EXTENSION}:SCALE", "<f4", 3), scene.scales, rtol=1e-6)
    opacity = attribute(f"{EXTENSION}:OPACITY", "<f4", 1)[:, 0]
    np.testing.assert_allclose(opacity, scene.opacities, rtol=1e-6)
    dc = attribute(f"{EXTENSION}:SH_DEGREE_0_COEF_0", "<f4", 3)
    np.testing.assert_allclose(0.5 + SH_C0 * dc, srgb_colors(scene), atol=1e-5)
    rgba = attribute("COLOR_0", "u1", 4)  # linear RGB for plain glTF viewers, and opacity
    np.testing.assert_allclose(rgba[:, :3] / 255, scene.colors, atol=0.5 / 255 + 1e-6)
    accessor = document["accessors"][primitive["attributes"]["POSITION"]]
    np.testing.assert_allclose(accessor["min"], positions.min(axis=0), rtol=1e-6)
    # The photo's camera: a node at the origin without rotation, glTF's camera looks down -z.
    camera = document["cameras"][0]
    assert camera["perspective"]["yfov"] == pytest.approx(
        2 * math.atan(scene.image_size[1] / (2 * scene.focal_px))
    )
    assert camera["perspective"]["aspectRatio"] == pytest.approx(64 / 48)
    node = next(n for n in document["nodes"] if "camera" in n)
    assert not {"matrix", "rotation", "translation"} & set(node)


@pytest.mark.parametrize("compression", ["none", "spz"])
def test_glb_round_trip(tmp_path: Path, compression: str) -> None:
    scene = random_scene(500)
    path = splat.write(scene, tmp_path / "s.glb", "glb", compression=compression)
    back = splat.read(path)
    assert splat.count(path) == len(back) == 500
    assert back.focal_px == scene.focal_px and back.image_size == scene.image_size
    if compression == "none":
        np.testing.assert_allclose(back.positions, scene.positions, atol=1e-5)
        np.testing.assert_allclose(back.colors, scene.colors, atol=1e-5)
        np.testing.assert_allclose(back.opacities, scene.opacities, atol=1e-6)
        return
    document = glb_document(path.read_bytes())
    assert document["extensionsRequired"] == [SPZ_EXTENSION]
    assert all("bufferView" not in a for a in document["accessors"])
    np.testing.assert_allclose(back.positions, scene.positions, atol=0.5 / 2**9 + 1e-6)
    np.testing.assert_allclose(back.opacities, scene.opacities, atol=0.5 / 255 + 1e-6)


def test_glb_refuses_unreadable_files_and_other_frames(tmp_path: Path) -> None:
    good = glb_bytes(random_scene(20))
    cases = {
        "not-glb": b"PK\x03\x04 not a glb at all....",
        "truncated": good[: len(good) // 2],
        "bad-json": good[:20] + b"[" + good[21:],
        "no-splats": good.replace(EXTENSION.encode(), b"KHR_gaussian_splatXing"),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.glb"
        path.write_bytes(data)
        with pytest.raises(SceneFormatError, match=r"not a readable \.glb"):
            splat.read(path)
    # An accessor that points past its buffer view.
    document = glb_document(good)
    document["accessors"][0]["byteOffset"] = 10**6
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    rest = good[20 + struct.unpack_from("<I", good, 12)[0] :]
    patched = struct.pack("<4sII", b"glTF", 2, 20 + len(text) + len(rest))
    (tmp_path / "range.glb").write_bytes(
        patched + struct.pack("<II", len(text), 0x4E4F534A) + text + rest
    )
    with pytest.raises(SceneFormatError, match="runs past"):
        splat.read(tmp_path / "range.glb")
    (tmp_path / "ok.glb").write_bytes(good)
    with pytest.raises(ConfigError, match=r"glTF file.*opengl"):
        splat.read(tmp_path / "ok.glb", frame="opencv")


# --------------------------------------------------------------------------------------
# SOG
# --------------------------------------------------------------------------------------


def test_sog_round_trip_within_its_quantization(tmp_path: Path) -> None:
    scene = random_scene(3000)
    path = splat.write(scene, tmp_path / "s.sog", "sog")
    assert path.read_bytes() == sog_bytes(scene)  # deterministic
    back = splat.read(path)
    assert splat.count(path) == len(back) == 3000
    assert back.focal_px == scene.focal_px and back.image_size == scene.image_size
    pairs = nearest(back.positions.astype(np.float64), scene.positions.astype(np.float64))
    t = np.log1p(np.abs(scene.positions.astype(np.float64)))
    step = (t.max(axis=0) + t.max(axis=0)) / 65535
    tolerance = (np.abs(scene.positions[pairs]) + 1) * step
    assert (np.abs(back.positions - scene.positions[pairs]) <= tolerance).all()
    assert np.abs(srgb_colors(back) - srgb_colors(scene)[pairs]).max() < 0.025
    assert np.abs(back.opacities - scene.opacities[pairs]).max() <= 0.5 / 255 + 1e-6
    assert np.abs(np.log(back.scales) - np.log(scene.scales[pairs])).max() < 0.05
    dots = np.abs((back.rotations * scene.rotations[pairs]).sum(axis=1))
    assert dots.min() > 0.9999


def test_sog_layout(tmp_path: Path) -> None:
    scene = random_scene(1000)
    with zipfile.ZipFile(io.BytesIO(sog_bytes(scene, frame="opengl"))) as archive:
        meta = json.loads(archive.read("meta.json"))
        assert meta["version"] == 2 and meta["count"] == 1000
        assert meta["mlsharp"]["frame"] == "opengl"
        assert len(meta["scales"]["codebook"]) == len(meta["sh0"]["codebook"]) == 256
        from PIL import Image

        for name in ("means_l.webp", "means_u.webp", "scales.webp", "quats.webp", "sh0.webp"):
            with Image.open(io.BytesIO(archive.read(name))) as image:
                assert image.format == "WEBP" and image.size == image_size_for(1000) == (32, 32)
                quats = np.asarray(image.convert("RGBA"))
            if name == "quats.webp":
                assert set(np.unique(quats.reshape(-1, 4)[:1000, 3])) <= {252, 253, 254, 255}


def test_sog_refuses_unreadable_files(tmp_path: Path) -> None:
    good = sog_bytes(random_scene(50))
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}

    def zipped(**changes: bytes | None) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as out:
            for name, data in {**entries, **changes}.items():
                if data is not None:
                    out.writestr(name, data)
        return buffer.getvalue()

    meta = json.loads(entries["meta.json"])
    cases = {
        "not a zip archive": b"not a zip",
        "no meta.json": zipped(**{"meta.json": None}),
        "SOG version 7": zipped(**{"meta.json": json.dumps({**meta, "version": 7}).encode()}),
        "no valid count": zipped(**{"meta.json": json.dumps({**meta, "count": -1}).encode()}),
        "quats.webp is missing": zipped(**{"quats.webp": None}),
        "too small": zipped(**{"meta.json": json.dumps({**meta, "count": 5000}).encode()}),
        "not a readable WebP": zipped(**{"sh0.webp": b"RIFF....WEBPnonsense"}),
    }
    for message, data in cases.items():
        path = tmp_path / "bad.sog"
        path.write_bytes(data)
        with pytest.raises(SceneFormatError, match=message):
            splat.read(path)


# --------------------------------------------------------------------------------------
# SPZ version 4
# --------------------------------------------------------------------------------------


def test_spz_v4_layout_and_round_trip(tmp_path: Path) -> None:
    scene = random_scene(800)
    scene.positions[0] = [3000.0, -20.0, 4000.0]  # kilometres away, as SHARP's far splats
    data = spz_bytes(scene, version=4)
    magic, version, count, degree, bits, flags, streams, toc = struct.unpack_from("<IIIBBBBI", data)
    assert (magic, version, count, degree, flags, streams, toc) == (0x5053474E, 4, 800, 0, 0, 5, 32)
    assert data[20:32] == bytes(12)
    sizes = [struct.unpack_from("<QQ", data, 32 + 16 * i) for i in range(5)]
    assert [u for _, u in sizes] == [800 * 9, 800, 800 * 3, 800 * 3, 800 * 4]
    assert 32 + 16 * 5 + sum(c for c, _ in sizes) == len(data)
    path = tmp_path / "v4.spz"
    path.write_bytes(data)
    back = splat.read(path)
    assert splat.count(path) == 800 and back.metadata["spz_version"] == 4
    np.testing.assert_allclose(back.positions, scene.positions, atol=0.5 / 2**bits + 1e-6)
    v3 = tmp_path / "v3.spz"
    v3.write_bytes(spz_bytes(scene, version=3))
    np.testing.assert_array_equal(splat.read(v3).positions, back.positions)  # same encodings
    with pytest.raises(ConfigError, match="SPZ version 5"):
        spz_bytes(scene, version=5)


def test_spz_v4_refuses_corrupt_streams(tmp_path: Path) -> None:
    import zstandard

    data = bytearray(spz_bytes(random_scene(100), version=4))
    first = struct.unpack_from("<Q", data, 32)[0]
    # The positions stream replaced by a valid zstd frame one byte short, its size updated.
    short = zstandard.ZstdCompressor().compress(bytes(899))
    shorter = bytearray(data[:112]) + short + data[112 + first :]
    struct.pack_into("<Q", shorter, 32, len(short))
    cases = {
        "stream table": bytes(data[:40]) + b"\xff" * 8 + bytes(data[48:]),
        "not valid zstd": bytes(data[:112]) + b"\x00" * 16 + bytes(data[128:]),
        "after its streams": bytes(data) + b"extra",
        "does not match": bytes(data[: 112 + first - 3]),
        "holds 899 bytes, expected 900": bytes(shorter),
    }
    for message, content in cases.items():
        path = tmp_path / "bad.spz"
        path.write_bytes(content)
        with pytest.raises(SceneFormatError, match=message):
            splat.read(path)
