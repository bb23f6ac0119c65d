"""The view layout: orientation, coverage with margins, sizes and focal lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlsharp.errors import ConfigError
from mlsharp.panorama.merge import fibonacci_directions
from mlsharp.panorama.projection import Equirectangular
from mlsharp.panorama.views import PanoramaLayout, layout_views, view_rotation, view_side


def test_default_layout_is_a_ring_of_four_plus_up_and_down():
    views = layout_views()
    assert [v.name for v in views] == ["yaw 0", "yaw 90", "yaw 180", "yaw 270", "up", "down"]
    axes = np.array([v.axis for v in views])
    np.testing.assert_allclose(
        axes, [[0, 0, 1], [1, 0, 0], [0, 0, -1], [-1, 0, 0], [0, -1, 0], [0, 1, 0]], atol=1e-12
    )
    for view in views:
        np.testing.assert_allclose(view.rotation.T @ view.rotation, np.eye(3), atol=1e-12)
        assert np.linalg.det(view.rotation) == pytest.approx(1.0)
        assert view.fov_degrees == 100.0
    # Ring views are upright: their image's down axis is the world's down (+y).
    for view in views[:4]:
        np.testing.assert_allclose(view.rotation[:, 1], [0, 1, 0], atol=1e-12)
    # Looking up, the bottom of the image is towards the front; looking down, the top.
    np.testing.assert_allclose(views[4].rotation[:, 1], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(views[5].rotation[:, 1], [0, 0, -1], atol=1e-12)
    # Turning right by 90° looks along +x with the right hand pointing back.
    np.testing.assert_allclose(view_rotation(90, 0)[:, 0], [0, 0, -1], atol=1e-12)


@pytest.mark.parametrize("layout", [PanoramaLayout(), PanoramaLayout(6, 110), PanoramaLayout(8)])
def test_each_view_sees_the_directions_it_owns_with_a_margin(layout):
    views = layout_views(layout)
    directions = fibonacci_directions(50_000)
    axes = np.stack([v.axis for v in views])
    owner = np.argmax(directions @ axes.T, axis=1)
    for index, view in enumerate(views):
        cam = directions[owner == index] @ view.rotation
        assert (cam[:, 2] > 0).all()
        extent = np.abs(cam[:, :2] / cam[:, 2:]).max()
        # The view reaches tan(fov / 2); what it owns stays at least MIN_MARGIN inside.
        assert extent <= view.reach - 0.05, (view.name, extent, view.reach)
    if layout == PanoramaLayout():
        # The default's borders lie 0.19 normalised units inside both views.
        assert view.reach - 1.0 == pytest.approx(0.1918, abs=1e-4)


def test_layouts_with_gaps_are_refused():
    with pytest.raises(ConfigError, match="at least 128°"):
        PanoramaLayout(ring=3, fov_degrees=100)
    with pytest.raises(ConfigError, match="at least 93°"):
        PanoramaLayout(ring=4, fov_degrees=90)  # a bare cube: borders at the very edge
    with pytest.raises(ConfigError, match="3 to 12"):
        PanoramaLayout(ring=13)
    with pytest.raises(ConfigError, match="60 to 150"):
        PanoramaLayout(fov_degrees=170)


def test_view_size_follows_the_panorama_and_focal_the_field_of_view():
    reach = math.tan(math.radians(50))
    small = Equirectangular(np.zeros((512, 1024, 3), np.uint8))
    assert view_side(small, 100, max_side=1536) == round(2 * 1024 / (2 * math.pi) * reach)
    large = Equirectangular(np.zeros((4096, 8192, 3), np.uint8))
    assert view_side(large, 100, max_side=1536) == 1536  # no more than the network reads
    view = layout_views()[0]
    assert view.focal_px(388) == pytest.approx(388 / (2 * reach))
