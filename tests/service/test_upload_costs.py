"""What a small upload may cost the server, over real HTTP: decode memory and batch size.

* A small PNG of a large flat image decodes to hundreds of MB: the memory decoding needs
  is estimated from the header and bounded by ``max_decode_bytes`` (413 before decoding).
* A small zip of compressible photos expanded to hundreds of MB of jobs: a batch's photos
  add up to at most ``max_batch_bytes`` (413), counted while unpacking; zips with
  absurd entry counts, lying sizes or zips inside are refused or skipped.
"""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
from PIL import Image

from mlsharp.imaging import decode_bytes
from tests.service.conftest import jpeg_bytes
from tests.service.test_api_batches import make_zip, post_batch
from tests.service.test_api_jobs import assert_error, post_job


def flat_png(width: int, height: int, mode: str = "P") -> bytes:
    """A flat image: a few KB of PNG for millions of pixels."""
    image = Image.new(mode, (width, height), 1 if mode in ("P", "L", "I;16") else (1, 2, 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bmp(width: int, height: int, seed: int) -> bytes:
    """An uncompressed BMP (deflates to almost nothing in a zip when flat)."""
    pixels = np.full((height, width, 3), seed % 256, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


def test_decode_memory_is_bounded_before_decoding(live_server) -> None:
    """A 3000x3000 16-bit PNG of a few KB needs ~100 MB to decode: over a 64 MiB
    max_decode_bytes it is 413 image_too_large, decided from its header."""
    png = flat_png(3000, 3000, "I;16")
    assert len(png) < 100_000 and decode_bytes("I;16", 3000, 3000) > 64 * 2**20
    with live_server(workers=0, max_decode_bytes=64 * 2**20) as server:
        body = assert_error(post_job(server, png, name="flat.png"), 413, "image_too_large")
        assert "memory" in body["message"] and "64 MiB" in body["message"]
        assert post_job(server, jpeg_bytes(64, 48)).status_code == 202
        assert server.state.decode_budget.in_use == 0  # every reservation was given back


def test_a_zip_expanding_past_the_batch_limit_is_413(live_server) -> None:
    """40 flat 1400x1000 BMPs: a ~0.2 MB zip that unpacks to 168 MB of jobs (it became
    40 jobs). With the default limits (max_batch_bytes: twice the 64 MiB upload limit)
    it is 413 from the declared sizes, and no job is created."""
    archive = make_zip({f"p{i}.bmp": bmp(1400, 1000, i) for i in range(40)}, zipfile.ZIP_DEFLATED)
    assert len(archive) < 1_000_000
    with live_server(workers=0) as server:
        body = assert_error(post_batch(server, ("bomb.zip", archive)), 413, "payload_too_large")
        assert "max_batch_bytes" in body["message"]
        assert server.client.get("/v1/jobs").json()["total"] == 0


def test_zip_members_that_lie_about_their_size_stop_at_the_limit(live_server) -> None:
    """A member whose header declares a small size but inflates further is never trusted:
    the bytes are counted as they are inflated (the zip is refused, nothing queued)."""
    big = bmp(1500, 1500, 7)  # 6.75 MB
    archive = bytearray(make_zip({"a.bmp": big}, zipfile.ZIP_DEFLATED))
    _declare_size(archive, "a.bmp", 1000)
    with live_server(workers=0, max_upload_bytes=2 * 2**20) as server:
        response = post_batch(server, ("liar.zip", bytes(archive)))
        assert response.status_code in (413, 422), response.text
        assert response.json()["error"] in ("payload_too_large", "invalid_zip")
        assert server.client.get("/v1/jobs").json()["total"] == 0


def test_a_zip_with_too_many_entries_is_refused_before_its_directory_is_read(
    live_server,
) -> None:
    """20,000 empty entries (a 2 MB zip): 413 too_many_files at once."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(20_000):
            archive.writestr(f"d/{i}.txt", b"")
    with live_server(workers=0) as server:
        response = post_batch(server, ("many.zip", buffer.getvalue()))
        assert_error(response, 413, "too_many_files")


def test_zips_inside_a_zip_are_not_opened(live_server) -> None:
    """A zip inside the zip is skipped (not a photo), and one named like a photo is
    refused as an unreadable image: nothing nested is ever unpacked."""
    inner = make_zip({"x.jpg": jpeg_bytes(color=(1, 1, 1))})
    outer = make_zip(
        {"inner.zip": inner, "disguised.jpg": inner, "ok.jpg": jpeg_bytes(color=(2, 2, 2))}
    )
    with live_server(workers=0) as server:
        response = post_batch(server, ("nested.zip", outer))
        assert response.status_code == 202, response.text
        body = response.json()
        assert [j["input_name"] for j in body["jobs"]] == ["ok.jpg"]
        assert [(r["name"], r["error"]) for r in body["rejected"]] == [
            ("disguised.jpg", "invalid_image")
        ]


def _declare_size(archive: bytearray, name: str, size: int) -> None:
    """Overwrite the uncompressed size of member ``name`` in its local header and in the
    central directory (the CRC stays that of the real data)."""
    encoded = name.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        at = archive.find(signature)
        while at >= 0:
            if archive[at + name_offset : at + name_offset + len(encoded)] == encoded:
                archive[at + size_offset : at + size_offset + 4] = struct.pack("<I", size)
            at = archive.find(signature, at + 4)
