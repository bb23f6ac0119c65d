"""The network: checkpoint compatibility, shapes, finiteness, tiling, composition."""

from __future__ import annotations

import json

import pytest
import torch

from mlsharp.model import build_model, preset
from mlsharp.model.composer import initialize, inverse_softplus
from mlsharp.model.encoder import merge_tiles, split_into_tiles
from tests.conftest import PARITY

MANIFEST = PARITY / "sharp_checkpoint_manifest.json"


def test_sharp_state_dict_matches_apple_checkpoint_manifest():
    manifest = json.loads(MANIFEST.read_text())
    model = build_model("sharp", device="meta")  # no memory: shapes only
    state = model.state_dict()
    expected = [(e["key"], tuple(e["shape"])) for e in manifest["state_dict"]]
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected
    assert sum(v.numel() for v in state.values()) == manifest["total_numel"] == 702_305_169
    assert len(state) == manifest["num_keys"] == 1038


def test_tiny_preset_has_the_same_module_structure_as_sharp():
    def structure(name: str) -> list[str]:
        # Key names with block indices of the ViT removed (depths differ).
        keys = build_model(name, device="meta").state_dict().keys()
        return sorted({k.split("blocks.")[0] + ("blocks" if "blocks." in k else "") for k in keys})

    assert structure("tiny") == structure("sharp")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def test_tiny_forward_shapes_and_finiteness(tiny_model):
    cfg = preset("tiny")
    size = cfg.internal_resolution
    image = torch.rand(2, 3, size, size)
    with torch.no_grad():
        out = tiny_model(image, torch.tensor([1.0, 0.7]))
    n = cfg.num_gaussians
    assert out.mean_vectors.shape == (2, n, 3)
    assert out.singular_values.shape == (2, n, 3)
    assert out.quaternions.shape == (2, n, 4)
    assert out.colors.shape == (2, n, 3)
    assert out.opacities.shape == (2, n)
    for tensor in out:
        assert torch.isfinite(tensor).all()
    assert (out.mean_vectors[..., 2] > 0).all(), "every Gaussian lies in front of the camera"
    assert (out.singular_values > 0).all()
    assert ((out.opacities > 0) & (out.opacities < 1)).all()


def test_batch_items_are_independent(tiny_model):
    size = preset("tiny").internal_resolution
    images = torch.rand(2, 3, size, size)
    factors = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        both = tiny_model(images, factors)
        second = tiny_model(images[1:], factors[1:])
    torch.testing.assert_close(both.mean_vectors[1:], second.mean_vectors, rtol=1e-4, atol=1e-5)


def test_wrong_input_size_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="expected a 512x512 image"):
        tiny_model(torch.rand(1, 3, 256, 256), torch.tensor([1.0]))


def test_split_and_merge_tiles_reassemble_the_image():
    image = torch.arange(2 * 1 * 52 * 52, dtype=torch.float32).reshape(2, 1, 52, 52)
    tiles = split_into_tiles(image, tile=16, overlap=0.25)  # stride 12 -> 4x4 tiles
    assert tiles.shape == (2 * 16, 1, 16, 16)
    assert torch.equal(tiles[1], image[1, :, 0:16, 0:16])  # tile 0 of batch item 1
    assert torch.equal(tiles[2 * 1 + 0], image[0, :, 0:16, 12:28])  # tile 1 of item 0
    # Overlap 4 px -> trim 2 px per inner edge reproduces the image exactly.
    assert torch.equal(merge_tiles(tiles, batch=2, trim=2), image)


def test_initialize_normalises_depth_and_builds_the_grid():
    depth = torch.full((1, 2, 8, 8), 4.0)
    depth[:, 1] = 8.0
    image = torch.rand(1, 3, 8, 8)
    init = initialize(image, depth, stride=2)
    assert torch.allclose(init.global_scale, torch.tensor([4.0]), rtol=1e-5)
    # Normalised depth 1 and 2 -> disparity 1 and 0.5 on a 4x4 grid, two layers.
    assert init.base.disparity.shape == (1, 1, 2, 4, 4)
    assert torch.allclose(init.base.disparity[:, :, 0], torch.tensor(1.0), rtol=1e-5)
    assert torch.allclose(init.base.disparity[:, :, 1], torch.tensor(0.5), rtol=1e-5)
    # Cell centres in NDC: (2 * (2i + 1) / 8) - 1.
    assert torch.allclose(init.base.x_ndc[0, 0, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert init.network_input.shape == (1, 5, 8, 8)


def test_inverse_softplus_inverts_softplus():
    x = torch.linspace(0.01, 5, 50)
    torch.testing.assert_close(torch.nn.functional.softplus(inverse_softplus(x)), x)
