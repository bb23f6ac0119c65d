"""Measuring the seams of a merged panorama: gaps and doubled layers.

A seam is where two views' cells meet (the directions equally near both optical axes).
Probe directions on the seams are checked against the merged splats' directions:

* **gap**: the angle from each probe to the nearest splat, in units of the grid spacing
  (the angle between neighbouring splats at a view's centre). One view's grid alone
  leaves at most ~0.7 of a spacing (half a diagonal); a gap between two views' splats
  shows as more.
* **layers**: the number of splats in a small cone around each probe divided by what one
  view's grid puts there (its density per steradian grows as ``(1 + x² + y²)^(3/2)`` in
  normalised image coordinates). One layer of splats gives ~1; two views both keeping
  their splats at the seam would give ~2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlsharp.panorama.merge import fibonacci_directions
from mlsharp.panorama.views import ViewSpec


@dataclass
class SeamStats:
    """Gap (grid spacings) and layer-ratio figures over the seam probes."""

    probes: int
    max_gap: float
    median_layers: float
    max_layers: float
    min_layers: float


def seam_probes(views: list[ViewSpec], count: int = 40_000, band_degrees: float = 0.25):
    """Directions within ``band_degrees`` of a seam, and each one's nearest view."""
    directions = fibonacci_directions(count)
    axes = np.stack([v.axis for v in views])
    cosines = directions @ axes.T
    order = np.argsort(-cosines, axis=1)
    rows = np.arange(len(directions))
    first = np.arccos(np.clip(cosines[rows, order[:, 0]], -1, 1))
    second = np.arccos(np.clip(cosines[rows, order[:, 1]], -1, 1))
    near = (second - first) < math.radians(band_degrees)
    return directions[near], order[near, 0]


def seam_stats(
    positions: np.ndarray, views: list[ViewSpec], per_view: int, layers: int
) -> SeamStats:
    """Gap and layer figures of a merged scene whose views each held ``per_view`` splats
    (``layers`` per grid cell) on a square grid over the view's field of view."""
    probes, owners = seam_probes(views)
    grid_side = math.sqrt(per_view / layers)
    reach = views[0].reach
    spacing = 2.0 * reach / grid_side  # radians between grid neighbours at a view's centre
    radius = 2.5 * spacing
    directions = positions / np.linalg.norm(positions, axis=1, keepdims=True)
    # Only splats near some seam can be near a probe: prefilter by the same test.
    axes = np.stack([v.axis for v in views])
    cosines = np.sort(directions @ axes.T, axis=1)
    margin = np.arccos(np.clip(cosines[:, -2], -1, 1)) - np.arccos(np.clip(cosines[:, -1], -1, 1))
    nearby = directions[margin < 4 * radius]
    gaps, ratios = [], []
    for start in range(0, len(probes), 256):
        chunk = probes[start : start + 256]
        angles = np.arccos(np.clip(chunk @ nearby.T, -1, 1))
        gaps.append(angles.min(axis=1) / spacing)
        found = (angles < radius).sum(axis=1)
        for probe, count, owner in zip(chunk, found, owners[start : start + 256], strict=True):
            x, y, z = probe @ views[owner].rotation
            density = (per_view / (2 * reach) ** 2) * (1 + (x / z) ** 2 + (y / z) ** 2) ** 1.5
            expected = density * 2 * math.pi * (1 - math.cos(radius))
            ratios.append(count / expected)
    gap = np.concatenate(gaps)
    layer = np.array(ratios)
    return SeamStats(
        probes=len(probes),
        max_gap=float(gap.max()),
        median_layers=float(np.median(layer)),
        max_layers=float(np.percentile(layer, 99)),
        min_layers=float(np.percentile(layer, 1)),
    )
