"""render_frames / render_preview images, and the MP4 / PNG writers."""

from __future__ import annotations

import io

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from mlsharp.errors import ConfigError, DeviceError
from mlsharp.gaussians import Gaussians
from mlsharp.render import (
    camera_at,
    encode_png,
    make_trajectory,
    render_frames,
    render_preview,
    write_mp4,
    write_png,
)
from mlsharp.render.frames import resolve_backend


def marker_scene() -> Gaussians:
    """A grey wall at z = 6 with a bright white blob ABOVE the centre (-y in the OpenCV
    frame) and a red blob to the RIGHT (+x), photographed by a 320x240 camera."""
    rng = np.random.default_rng(0)
    n = 4000
    wall = np.stack([rng.uniform(-5, 5, n), rng.uniform(-4, 4, n), np.full(n, 6.0)], -1)
    positions = np.vstack([[[0.0, -1.2, 4.0]], [[1.5, 0.0, 4.0]], wall])
    colors = np.vstack([[[1.0, 1.0, 1.0]], [[1.0, 0.0, 0.0]], np.full((n, 3), 0.05)])
    scales = np.vstack([[[0.25] * 3], [[0.25] * 3], np.full((n, 3), 0.12)])
    return Gaussians(
        positions=positions.astype(np.float32),
        scales=scales.astype(np.float32),
        rotations=np.tile(np.float32([1, 0, 0, 0]), (n + 2, 1)),
        colors=colors.astype(np.float32),
        opacities=np.full(n + 2, 0.95, np.float32),
        focal_px=300.0,
        image_size=(320, 240),
    )


def centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    assert rows.size, "marker not visible"
    return rows.mean(), cols.mean()


@pytest.mark.parametrize("kind", ["orbit", "spiral"])
def test_frames_are_upright_and_not_mirrored(kind):
    g = marker_scene()
    cameras = [camera_at(g, (160, 120)), *make_trajectory(g, kind, 4, (160, 120))]
    frames = list(render_frames(g, cameras, device="cpu", backend="torch"))
    assert len(frames) == 5
    for frame in frames:
        assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
        assert frame.std() > 5  # not empty / flat
        white = (frame > 200).all(-1)
        red = (frame[..., 0] > 200) & (frame[..., 1] < 80)
        white_row, white_col = centroid(white)
        red_row, red_col = centroid(red)
        assert white_row < 60 - 10  # above the centre: the top half of the image
        assert red_col > 80 + 10  # +x: the right half
        assert abs(white_col - 80) < 25 and abs(red_row - 60) < 25


def test_linear_colours_are_encoded_as_srgb():
    # A fully covering wall of linear 0.2 shows as sRGB 0.2 ** (1 / 2.4) * 1.055 - 0.055.
    g = marker_scene()
    g.colors[:] = 0.2
    g.opacities[:] = 1.0
    g.scales[2:] = 0.5
    image = render_preview(g, width=64)
    expected = round((1.055 * 0.2 ** (1 / 2.4) - 0.055) * 255)
    assert image.shape == (48, 64, 3)
    assert abs(int(np.median(image)) - expected) <= 1


def test_background_colour_shows_where_there_are_no_splats():
    g = marker_scene()
    g.opacities[:] = 0.0
    image = render_preview(g, width=32, background="#336699")
    assert (image == np.array([0x33, 0x66, 0x99], np.uint8)).all()
    with pytest.raises(ConfigError):
        render_preview(g, width=32, background="mauve")


def test_preview_png_bytes_decode_to_the_same_image():
    g = marker_scene()
    image = render_preview(g, width=100, height=50)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
    assert decoded.shape == (50, 100, 3)
    np.testing.assert_array_equal(decoded, image)


def test_backend_choice():
    import torch

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(DeviceError):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ConfigError):
        resolve_backend("opengl", torch.device("cpu"))


def test_auto_never_picks_gsplat_on_rocm_or_without_cuda():
    from mlsharp.render.gsplat_backend import gsplat_usable

    assert gsplat_usable("cuda", None, True)
    assert not gsplat_usable("cuda", "6.4", True)  # ROCm torch: device type "cuda", HIP set
    assert not gsplat_usable("cuda", None, False)
    assert not gsplat_usable("mps", None, True) and not gsplat_usable("cpu", None, True)


def test_doctor_says_which_rasterizer_render_uses():
    from dataclasses import replace

    from mlsharp.runtime.doctor import render_summary
    from tests.test_doctor import LINUX_CPU_ONLY, gpu

    nvidia = replace(LINUX_CPU_ONLY, torch_cuda="12.8", cuda_available=True, gpus=(gpu(),))
    rocm = replace(nvidia, torch_cuda=None, torch_hip="6.4")
    assert render_summary(nvidia, gsplat_installed=True) == "gsplat on CUDA (installed)"
    assert "render-cuda" in render_summary(nvidia, gsplat_installed=False)
    assert "CUDA only, not ROCm" in render_summary(rocm, gsplat_installed=True)
    assert "render-cuda" not in render_summary(rocm, gsplat_installed=False)
    assert render_summary(LINUX_CPU_ONLY, False).startswith("PyTorch rasterizer")


def test_mp4_to_an_unwritable_place_is_one_oserror_and_no_ffmpeg_noise(tmp_path, capfd):
    frame = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(OSError, match="ffmpeg failed"):
        write_mp4([frame, frame], "/proc/nowhere.mp4", (12, 10))
    assert capfd.readouterr().err == ""  # ffmpeg's own messages are captured, not printed


def test_mp4_is_readable_with_the_right_size_and_frame_count(tmp_path):
    g = marker_scene()
    size = (96, 72)
    cameras = make_trajectory(g, "swing", 9, size)
    dest = tmp_path / "clip.mp4"
    count = write_mp4(render_frames(g, cameras, device="cpu"), dest, size, fps=12)
    assert count == 9
    reader = imageio_ffmpeg.read_frames(str(dest))
    meta = next(reader)
    assert tuple(meta["size"]) == size and meta["fps"] == pytest.approx(12)
    frames = [np.frombuffer(f, np.uint8).reshape(72, 96, 3) for f in reader]
    assert len(frames) == 9
    assert all(f.std() > 5 for f in frames)
    # A swing moves the camera: the first and middle frames differ.
    assert np.abs(frames[0].astype(int) - frames[4].astype(int)).mean() > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temp files left


def test_mp4_rejects_odd_sizes_and_mismatched_frames_without_leaving_files(tmp_path):
    frame = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ConfigError, match="even"):
        write_mp4([frame], tmp_path / "odd.mp4", (11, 10))
    with pytest.raises(ConfigError, match="does not match"):
        write_mp4([frame], tmp_path / "bad.mp4", (14, 10))
    with pytest.raises(ConfigError, match="no frames"):
        write_mp4([], tmp_path / "empty.mp4", (12, 10))
    assert list(tmp_path.iterdir()) == []


def test_png_still_is_written_atomically(tmp_path):
    image = render_preview(marker_scene(), width=40)
    dest = write_png(image, tmp_path / "still.png")
    np.testing.assert_array_equal(np.asarray(Image.open(dest)), image)
    assert [p.name for p in tmp_path.iterdir()] == ["still.png"]


def test_the_photo_viewpoint_reproduces_the_photo():
    """A photo turned into a textured plane of splats (as the model does, linear colours,
    positions unprojected with the focal length) renders back as the photo: upright, not
    mirrored, same colours."""
    from tests.conftest import PARITY

    photo = Image.open(PARITY / "images" / "astronaut.jpg").convert("RGB")
    srgb = np.asarray(photo, np.float32) / 255
    height, width = srgb.shape[:2]
    focal = 600.0
    block = srgb.reshape(height // 2, 2, width // 2, 2, 3).mean((1, 3))
    linear = np.where(block <= 0.04045, block / 12.92, ((block + 0.055) / 1.055) ** 2.4)
    v, u = np.mgrid[0 : height // 2, 0 : width // 2] * 2 + 1.0
    # A plane with depth jitter (a slanted one would shift colours: on a slant each pixel
    # is dominated by the nearer of two overlapping opaque splats, which is physical).
    z = 3.0 + np.random.default_rng(0).uniform(-0.03, 0.03, u.shape)
    positions = np.stack([(u - width / 2) / focal * z, (v - height / 2) / focal * z, z], -1)
    sigma = (z * 2 / focal * 0.6).reshape(-1)
    g = Gaussians(
        positions=positions.reshape(-1, 3).astype(np.float32),
        scales=np.stack([sigma, sigma, sigma * 0.1], -1).astype(np.float32),
        rotations=np.tile(np.float32([1, 0, 0, 0]), (sigma.size, 1)),
        colors=linear.reshape(-1, 3).astype(np.float32),
        opacities=np.full(sigma.size, 0.99, np.float32),
        focal_px=focal,
        image_size=(width, height),
    )
    image = render_preview(g, width=128).astype(float)
    expected = np.asarray(photo.resize((128, 128), Image.BOX)).astype(float)
    error = np.abs(image - expected).mean()
    assert error < 12  # splats blur a little (0.3 px² low-pass); colours and layout match
    assert np.abs(image[:, ::-1] - expected).mean() > 3 * error  # not mirrored
    assert np.abs(image[::-1] - expected).mean() > 3 * error  # not upside down
    # No sub-pixel drift either way (principal point at the image centre).
    assert np.abs(image[:, 1:] - expected[:, :-1]).mean() > error
    assert np.abs(image[:, :-1] - expected[:, 1:]).mean() > error
