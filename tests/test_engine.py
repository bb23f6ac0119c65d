"""The Engine: one load, many predictions, on the tiny preset."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mlsharp.engine import Engine
from mlsharp.errors import CheckpointError, DeviceError
from mlsharp.imaging import load_image
from mlsharp.model import preset


@pytest.fixture(scope="module")
def engine(tiny_checkpoint) -> Engine:
    return Engine.load(tiny_checkpoint, preset="tiny", device="cpu", download=False)


def _photo(width: int, height: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("width", "height", "mode"), [(640, 480, "RGB"), (300, 500, "L")])
def test_predict_returns_metric_gaussians_for_any_aspect(engine, width, height, mode):
    image = load_image(_photo(width, height, mode), focal_mm=35)
    g = engine.predict(image)
    assert len(g) == preset("tiny").num_gaussians
    assert g.image_size == (width, height)
    assert g.focal_px == pytest.approx(image.focal_px)
    for array in (g.positions, g.scales, g.rotations, g.colors, g.opacities):
        assert np.isfinite(array).all()
    assert (g.positions[:, 2] > 0).all()
    # Rows of the grid run top to bottom in +y (OpenCV): first-layer y grows with the index.
    first_layer = g.positions[: len(g) // 2]
    side = preset("tiny").output_resolution
    ndc_y = (first_layer[:, 1] / first_layer[:, 2]).reshape(side, side)
    assert ndc_y[0].mean() < 0 < ndc_y[-1].mean()
    timings = g.metadata["timings"]
    assert timings.inference > 0 and timings.postprocess > 0


def test_predictions_are_deterministic(engine):
    image = load_image(_photo(200, 200))
    first, second = engine.predict(image), engine.predict(image)
    np.testing.assert_array_equal(first.positions, second.positions)


def test_focal_length_scales_the_scene_width(engine):
    photo = _photo(256, 256)
    wide = engine.predict(load_image(photo, focal_mm=20))
    narrow = engine.predict(load_image(photo, focal_mm=80))
    # A longer lens sees a narrower field: same pixels, smaller x/z spread.
    spread = lambda g: np.abs(g.positions[:, 0] / g.positions[:, 2]).max()  # noqa: E731
    assert spread(narrow) == pytest.approx(spread(wide) / 4, rel=1e-3)


def test_wrong_preset_is_a_checkpoint_error(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="does not match"):
        Engine.load(tiny_checkpoint, preset="sharp", device="cpu", download=False)


def test_missing_device_is_a_device_error(tiny_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError):
        Engine.load(tiny_checkpoint, preset="tiny", device="cuda", download=False)
