"""The pure-PyTorch rasterizer against closed forms and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlsharp.gaussians import Gaussians
from mlsharp.render.binning import bin_splats
from mlsharp.render.camera import Camera, camera_at
from mlsharp.render.composite import composite
from mlsharp.render.project import Splats2D, project, support_extents
from mlsharp.render.scene import SceneTensors
from mlsharp.render.torch_backend import rasterize_torch
from mlsharp.render.trajectory import make_trajectory
from tests.render.reference import composite_bruteforce, project_reference

CPU = torch.device("cpu")


def scene(positions, scales, colors, opacities, rotations=None, *, focal=100.0, size=(41, 41)):
    """Gaussians from lists (identity rotations unless given)."""
    n = len(positions)
    rot = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)) if rotations is None else rotations
    return Gaussians(
        positions=np.asarray(positions, np.float32),
        scales=np.asarray(scales, np.float32),
        rotations=np.asarray(rot, np.float32),
        colors=np.asarray(colors, np.float32),
        opacities=np.asarray(opacities, np.float32),
        focal_px=focal,
        image_size=size,
    )


def render_linear(g: Gaussians, camera: Camera | None = None, bg=(0.0, 0.0, 0.0), **kw):
    """(H, W, 3) linear image and (H, W) alpha as NumPy."""
    camera = camera or camera_at(g, g.image_size)
    image, alpha = rasterize_torch(
        SceneTensors.from_gaussians(g, CPU), camera, torch.tensor(bg, dtype=torch.float32), **kw
    )
    return image.numpy(), alpha.numpy()


# --- a single Gaussian: closed forms -----------------------------------------------------


def test_isotropic_gaussian_centre_value_and_one_sigma_falloff():
    # sigma_2d = f * sigma / z = 100 * 0.2 / 5 = 4 px; the centre lands on pixel (20, 20)
    # because the principal point of a 41-px image is 20.5 (the centre of pixel 20).
    opacity, color = 0.8, np.array([0.9, 0.5, 0.25])
    g = scene([[0, 0, 5]], [[0.2, 0.2, 0.2]], [color], [opacity])
    image, alpha = render_linear(g, low_pass=0.0)
    assert alpha[20, 20] == pytest.approx(opacity, abs=1e-5)
    np.testing.assert_allclose(image[20, 20], opacity * color, atol=1e-5)
    one_sigma = opacity * math.exp(-0.5)
    for row, col in [(20, 24), (20, 16), (24, 20), (16, 20)]:
        assert alpha[row, col] == pytest.approx(one_sigma, abs=1e-5)
    two_sigma = opacity * math.exp(-2.0)
    assert alpha[20, 28] == pytest.approx(two_sigma, abs=1e-5)
    # Below 1/255 nothing is added: at 3.4 sigma 0.8 * exp(-5.78) < 1/255.
    assert alpha[20, 34] == 0.0
    assert alpha.sum() > 0 and np.isfinite(image).all()


def test_low_pass_adds_to_the_2d_variance():
    g = scene([[0, 0, 5]], [[0.2, 0.2, 0.2]], [[1, 1, 1]], [0.5])
    _, alpha = render_linear(g, low_pass=0.3)
    variance = 16.0 + 0.3
    assert alpha[20, 24] == pytest.approx(0.5 * math.exp(-0.5 * 16 / variance), abs=1e-5)


def test_anisotropic_rotated_gaussian_matches_closed_form_and_orientation():
    theta = math.radians(30)
    # Rotation about the optical axis by theta: w = cos(theta/2), z = sin(theta/2).
    quat = [[math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)]]
    g = scene([[0, 0, 5]], [[0.3, 0.1, 0.05]], [[1, 1, 1]], [0.9], quat, size=(61, 61))
    _, alpha = render_linear(g, low_pass=0.0)
    # In pixels: std 6 px along (cos theta, sin theta) and 2 px across (image y is down).
    axis = np.array([math.cos(theta), math.sin(theta)])
    normal = np.array([-axis[1], axis[0]])
    ys, xs = np.mgrid[0:61, 0:61] + 0.5
    d = np.stack([xs - 30.5, ys - 30.5], -1)
    d2 = (d @ axis / 6.0) ** 2 + (d @ normal / 2.0) ** 2
    expected = np.minimum(0.99, 0.9 * np.exp(-0.5 * d2))
    expected[expected < 1 / 255] = 0.0
    np.testing.assert_allclose(alpha, expected, atol=1e-5)
    # The footprint's principal axis, from its second moments, points along theta.
    weights = alpha / alpha.sum()
    centred = d - (weights[..., None] * d).sum((0, 1))
    cov = np.einsum("hw,hwi,hwj->ij", weights, centred, centred)
    major = np.linalg.eigh(cov)[1][:, -1]
    angle = math.degrees(math.atan2(major[1], major[0])) % 180
    assert angle == pytest.approx(30.0, abs=0.5)


# --- two splats: ordering and partial transparency ---------------------------------------


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_splat_is_composited_first_whatever_the_input_order(near_first):
    red, blue, bg = np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), np.array([0.0, 1.0, 0.0])
    near = ([0, 0, 2.0], [0.5] * 3, red, 0.6)
    far = ([0, 0, 4.0], [1.0] * 3, blue, 0.5)
    splats = [near, far] if near_first else [far, near]
    g = scene(*(list(column) for column in zip(*splats, strict=True)))
    image, alpha = render_linear(g, bg=tuple(bg), low_pass=0.0)
    # C = a1 c1 + (1 - a1) a2 c2 + (1 - a1)(1 - a2) bg at the centre (both alphas = opacity).
    expected = 0.6 * red + 0.4 * 0.5 * blue + 0.4 * 0.5 * bg
    np.testing.assert_allclose(image[20, 20], expected, atol=1e-5)
    assert alpha[20, 20] == pytest.approx(1 - 0.4 * 0.5, abs=1e-6)


def test_an_opaque_near_splat_hides_the_far_one():
    g = scene(
        [[0, 0, 4.0], [0, 0, 2.0]], [[1.0] * 3, [0.5] * 3], [[0, 0, 1.0], [1.0, 0, 0]], [1.0, 1.0]
    )
    image, _ = render_linear(g, low_pass=0.0)
    # alpha is clamped to 0.99 and the far splat would bring T to 0.01 * 0.01 <= 1e-4, so
    # the pixel stops after the near splat (3DGS rule): red 0.99, no blue.
    np.testing.assert_allclose(image[20, 20], [0.99, 0.0, 0.0], atol=1e-6)


def test_splats_behind_the_camera_or_transparent_are_culled():
    g = scene(
        [[0, 0, -3.0], [0, 0, 0.001], [0, 0, 3.0]],
        [[1.0] * 3] * 3,
        [[1, 1, 1]] * 3,
        [1.0, 1.0, 0.001],
    )
    image, alpha = render_linear(g, bg=(0.25, 0.5, 0.75))
    assert alpha.max() == 0.0
    np.testing.assert_allclose(image, np.broadcast_to([0.25, 0.5, 0.75], image.shape), atol=1e-7)


# --- tiled == brute force ----------------------------------------------------------------


def random_splats2d(rng: np.random.Generator, n: int, width: int, height: int):
    means = rng.uniform(-12, [width + 12, height + 12], (n, 2))
    sigma = rng.uniform(0.4, 9.0, (n, 2))
    angle = rng.uniform(0, np.pi, n)
    rot = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], -1)
    rot = rot.reshape(n, 2, 2)
    cov = rot @ (sigma[:, :, None] ** 2 * np.eye(2)) @ rot.transpose(0, 2, 1)
    inv = np.linalg.inv(cov)
    return {
        "means": means,
        "conics": np.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1),
        "cov_diag": np.stack([cov[:, 0, 0], cov[:, 1, 1]], -1),
        # Many near-opaque splats so that pixels reach the 1e-4 stop inside the test.
        "opacities": np.where(rng.random(n) < 0.5, rng.uniform(0.9, 1.0, n), rng.random(n)),
        "colors": rng.random((n, 3)),
        "depths": rng.uniform(1, 10, n),
    }


def as_splats2d(s: dict) -> Splats2D:
    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in s.items()}
    return Splats2D(
        means=t["means"],
        conics=t["conics"],
        opacities=t["opacities"],
        colors=t["colors"],
        depths=t["depths"],
        extents=support_extents(t["cov_diag"], t["opacities"]),
    )


@pytest.mark.parametrize(
    ("tile_size", "chunk", "budget"), [(8, 32, 1 << 19), (16, 64, 1 << 19), (4, 5, 4000)]
)
def test_tiled_compositing_equals_brute_force(tile_size, chunk, budget):
    rng = np.random.default_rng(tile_size)
    width, height = 75, 53  # not multiples of the tile size
    s = random_splats2d(rng, 300, width, height)
    bg = np.array([0.1, 0.2, 0.3])
    expected, expected_alpha = composite_bruteforce(
        s["means"], s["conics"], s["opacities"], s["colors"], s["depths"], width, height, bg
    )
    assert (expected_alpha > 1 - 1e-3).any()  # the early-stop rule is exercised
    bins = bin_splats(as_splats2d(s), width, height, tile_size)
    image, alpha = composite(
        bins, width, height, torch.tensor(bg, dtype=torch.float32), chunk=chunk, budget=budget
    )
    np.testing.assert_allclose(image.numpy(), expected, atol=2e-5)
    np.testing.assert_allclose(alpha.numpy(), expected_alpha, atol=2e-5)


def test_unique_sort_keys_bin_like_the_stable_sort():
    # MPS ignores stable=True; unique keys make the order independent of stability.
    from mlsharp.render.binning import depth_order, pair_keys

    rng = np.random.default_rng(11)
    s = random_splats2d(rng, 500, 97, 61)
    s["depths"][::7] = s["depths"][0]  # ties in depth too
    splats = as_splats2d(s)
    stable = bin_splats(splats, 97, 61, 8, unique_keys=False)
    unique = bin_splats(splats, 97, 61, 8, unique_keys=True)
    for name in ("pair_splats", "tile_start", "tile_count"):
        assert torch.equal(getattr(stable, name), getattr(unique, name)), name
    assert torch.equal(stable.splats.depths, unique.splats.depths)
    order = depth_order(splats.depths, unique_keys=True)
    assert torch.equal(order, depth_order(splats.depths, unique_keys=False))
    tiles = torch.randint(0, 50, (1000,))
    ranks = torch.randperm(1000)  # one pair per (tile, splat)
    keys = pair_keys(tiles, ranks, 1000)
    assert keys.unique().numel() == keys.numel()  # so any sort gives the same order


def test_step_budget_per_device_type_changes_only_the_batching():
    from mlsharp.render.composite import BUDGETS, default_budget

    cpu, gpu = default_budget(torch.device("cpu")), default_budget(torch.device("cuda"))
    assert gpu >= 16 * cpu  # GPUs get big steps (launch-bound otherwise)
    assert default_budget(torch.device("mps")) == BUDGETS["mps"]
    assert default_budget(torch.device("xpu")) == cpu
    rng = np.random.default_rng(3)
    s = random_splats2d(rng, 400, 120, 90)
    bins = bin_splats(as_splats2d(s), 120, 90, 8)
    bg = torch.tensor([0.1, 0.2, 0.3])
    small, small_alpha = composite(bins, 120, 90, bg, budget=cpu // 64)
    large, large_alpha = composite(bins, 120, 90, bg, budget=gpu)
    assert torch.equal(small, large) and torch.equal(small_alpha, large_alpha)


def test_full_pipeline_equals_reference_projection_and_brute_force():
    rng = np.random.default_rng(7)
    n = 250
    positions = np.stack(
        [rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(-1, 8, n)], -1
    )
    quats = rng.normal(size=(n, 4))
    g = scene(
        positions,
        rng.uniform(0.02, 0.4, (n, 3)),
        rng.random((n, 3)),
        rng.uniform(0.05, 1.0, n),
        quats / np.linalg.norm(quats, axis=1, keepdims=True),
        focal=60.0,
        size=(80, 60),
    )
    camera = make_trajectory(g, "spiral", 8, (80, 60))[3]  # an off-axis, rotated view
    image, alpha = render_linear(g, camera, bg=(0.0, 0.0, 0.0))
    ref = project_reference(
        g.positions.astype(np.float64),
        g.scales,
        g.rotations.astype(np.float64),
        camera.rotation,
        camera.translation,
        (camera.fx, camera.fy),
        (camera.cx, camera.cy),
        (camera.width, camera.height),
        0.3,
    )
    kept = ref["kept"]
    expected, expected_alpha = composite_bruteforce(
        ref["means"],
        ref["conics"],
        g.opacities[kept].astype(np.float64),
        g.colors[kept].astype(np.float64),
        ref["depths"],
        80,
        60,
        np.zeros(3),
    )
    assert expected_alpha.mean() > 0.1  # the view sees a good part of the scene
    np.testing.assert_allclose(alpha, expected_alpha, atol=2e-4)
    np.testing.assert_allclose(image, expected, atol=2e-4)


def test_projection_keeps_only_splats_touching_the_image():
    g = scene(
        [[0, 0, 5.0], [100.0, 0, 5.0], [0, 0, -5.0]], [[0.1] * 3] * 3, [[1, 1, 1]] * 3, [1.0] * 3
    )
    splats = project(SceneTensors.from_gaussians(g, CPU), camera_at(g, (41, 41)))
    assert len(splats) == 1
    np.testing.assert_allclose(splats.means.numpy(), [[20.5, 20.5]], atol=1e-5)


def test_empty_scene_renders_the_background():
    g = scene(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    image, alpha = render_linear(g, bg=(1.0, 0.5, 0.0))
    assert alpha.max() == 0.0
    np.testing.assert_allclose(image[..., 0], 1.0)
