"""The internal resolution: which values the architecture accepts, and running at them.

The sliding-pyramid encoder needs tiles of 8k ViT tokens (k >= 1) so the overlaps trim to
whole tokens: the side is a multiple of 4 x 8 x 16 = 512 px (up to twice the native side).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mlsharp.config import Settings
from mlsharp.engine import Engine
from mlsharp.errors import ConfigError
from mlsharp.imaging import load_image
from mlsharp.model import build_model, preset
from mlsharp.model.vit import VisionTransformer
from mlsharp.runtime.options import RuntimeOptions
from tests.test_precision import structured_photo


def test_valid_resolutions_follow_the_tile_rule():
    assert preset("sharp").valid_resolutions() == (512, 1024, 1536, 2048, 2560, 3072)
    assert preset("tiny").valid_resolutions() == (512, 1024)
    for name in ("sharp", "tiny"):
        cfg = preset(name)
        assert cfg.internal_resolution in cfg.valid_resolutions()
        assert cfg.num_gaussians_at(cfg.internal_resolution) == cfg.num_gaussians


@pytest.mark.parametrize("resolution", [1024])
def test_tiny_runs_at_a_larger_resolution_with_four_times_the_gaussians(
    tiny_checkpoint, resolution
):
    engine = Engine.load(
        tiny_checkpoint,
        preset="tiny",
        device="cpu",
        download=False,
        options=RuntimeOptions(resolution=resolution),
    )
    assert engine.internal_resolution == resolution
    image = load_image(structured_photo(160, 120), focal_mm=30)
    g = engine.predict(image)
    native = preset("tiny").num_gaussians
    assert len(g) == engine.num_gaussians == native * (resolution // 512) ** 2
    assert np.isfinite(g.positions).all() and (g.positions[:, 2] > 0).all()
    assert (g.scales > 0).all() and np.isfinite(g.rotations).all()
    assert g.depth is not None and g.depth.shape == (120, 160)


def test_a_model_runs_at_a_smaller_resolution_than_its_native_one():
    # The tiny preset is already at the smallest valid size (512), so use a tiny variant
    # whose ViT tiles are 256 px (native 1024) and run it at 512.
    cfg = replace(preset("tiny"), vit=replace(preset("tiny").vit, img_size=256))
    assert cfg.internal_resolution == 1024 and 512 in cfg.valid_resolutions()
    torch.manual_seed(0)
    model = build_model(cfg)
    engine = Engine.from_model(model, torch.device("cpu"), options=RuntimeOptions(resolution=512))
    g = engine.predict(load_image(structured_photo(96, 128), focal_mm=24))
    assert len(g) == cfg.num_gaussians // 4 == cfg.num_gaussians_at(512)
    assert np.isfinite(g.positions).all() and (g.positions[:, 2] > 0).all()
    # The same weights at their native resolution: 4x the Gaussians, similar depth range.
    native = Engine.from_model(model, torch.device("cpu")).predict(
        load_image(structured_photo(96, 128), focal_mm=24)
    )
    assert len(native) == cfg.num_gaussians


def test_position_embedding_is_stored_at_native_size_and_resampled_elsewhere():
    vit = VisionTransformer(preset("tiny").vit)
    with torch.no_grad():
        vit.pos_embed.copy_(torch.randn_like(vit.pos_embed))
        native = vit.cfg.grid_size
        assert vit.position_embedding(native) is vit.pos_embed
        bigger = vit.position_embedding(2 * native)
        assert bigger.shape == (1, 1 + (2 * native) ** 2, vit.cfg.embed_dim)
        assert torch.equal(bigger[:, 0], vit.pos_embed[:, 0]), "the cls position is kept"
        # Bicubic resampling reproduces a constant field exactly.
        vit.pos_embed[:, 1:] = 0.25
        assert torch.allclose(vit.position_embedding(16)[:, 1:], torch.tensor(0.25))


@pytest.mark.parametrize(
    ("resolution", "why"),
    [(768, "multiple of 512"), (256, "multiple of 512"), (2048, "up to twice the native 512")],
)
def test_invalid_resolutions_are_config_errors_listing_valid_values(
    tiny_checkpoint, resolution, why
):
    with pytest.raises(ConfigError) as caught:
        Engine.load(
            tiny_checkpoint,
            preset="tiny",
            device="cpu",
            download=False,
            options=RuntimeOptions(resolution=resolution),
        )
    message = str(caught.value)
    assert f"internal resolution {resolution} is not valid" in message
    assert why in message and "valid: 512 (native), 1024" in message


def test_the_model_itself_rejects_an_invalid_size():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="multiple of 512"):
        build_model("tiny")(torch.rand(1, 3, 768, 768), torch.tensor([1.0]))


def test_settings_validate_resolution():
    assert Settings.load(None, resolution=1024).resolution == 1024
    expected = r"^invalid setting resolution \(--resolution\): .*not a positive multiple of 512"
    with pytest.raises(ConfigError, match=expected):
        Settings.load(None, resolution=1000)


def test_cli_resolution_flag(run_cli, tiny_checkpoint, tmp_path):
    from mlsharp.splat import read_ply

    photo = tmp_path / "photo.png"
    photo.write_bytes(structured_photo(64, 48))
    common = ["--checkpoint", str(tiny_checkpoint), "--preset", "tiny", "--device", "cpu", "-q"]
    ok = run_cli(
        "predict", str(photo), "-o", str(tmp_path / "out"), "--resolution", "1024", *common
    )
    assert ok.returncode == 0, ok.stderr
    assert len(read_ply(tmp_path / "out" / "photo.ply")) == 4 * preset("tiny").num_gaussians
    bad = run_cli(
        "predict", str(photo), "-o", str(tmp_path / "bad"), "--resolution", "1536", *common
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("mlsharp: error: internal resolution 1536 is not valid")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sharp_preset_runs_at_512(tmp_path):
    # The full-size network (random weights) at a third of its native side: 1/9 of the
    # Gaussians and a small fraction of the ViT work (64-token tiles instead of 576).
    torch.manual_seed(0)
    model = build_model("sharp")
    engine = Engine.from_model(model, torch.device("cpu"), options=RuntimeOptions(resolution=512))
    g = engine.predict(load_image(structured_photo(160, 120), focal_mm=30))
    assert len(g) == preset("sharp").num_gaussians // 9
    assert np.isfinite(g.positions).all() and (g.positions[:, 2] > 0).all()
