"""Merging the views' Gaussians into one panorama scene (NumPy only).

Each view's Gaussians are in that view's camera frame. The merge

1. **reconciles depth scales.** SHARP's metric depth is predicted per view, and two views
   can disagree by a few per cent (or by far more with untrained weights). The depth maps of
   neighbouring views are compared where the views overlap: on a fixed set of ~20,000
   directions spread evenly over the sphere (a Fibonacci lattice), each view's depth map
   is sampled (bilinear) and turned into the distance along the ray; for every pair of
   overlapping views the median log ratio of their distances is taken (robust to the odd
   occlusion edge). One log scale per view then follows by weighted least squares over
   all pairs (weight: the number of shared directions), with the views' mean log scale
   held at 0, so the panorama keeps SHARP's overall metric scale. The *seam residual* is
   the relative distance mismatch left between the two views that meet at a seam, on the
   directions within 3° of it (median and 95th percentile, before and after scaling);
2. **keeps each direction from one view**: a Gaussian is kept only if the optical axis of
   its own view is the nearest to the Gaussian's direction from the centre (a partition of
   the sphere into cells around the axes), so overlaps hold one layer of splats, never
   two. Gaussians behind their camera or with non-finite values are dropped;
3. **moves the kept Gaussians into the panorama's frame**: position ``s R p``, scales
   ``s``-fold, orientation ``q_R ⊗ q`` (``R`` the view's camera-to-world rotation, ``s``
   its depth scale), colours and opacities unchanged.

The merged :class:`~mlsharp.gaussians.Gaussians` carries a forward camera (90° wide,
4:3, looking along +z) as its focal length and image size, so renderers and viewers open
it at the centre looking forward; its ``depth`` is an equirectangular map of the distance
from the centre; ``metadata["panorama"]`` records the layout, the scales and the seams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlsharp.gaussians import Gaussians
from mlsharp.panorama.projection import bilinear, equirect_directions
from mlsharp.panorama.views import ViewSpec

#: Directions on which overlapping views' depths are compared.
SCALE_SAMPLES = 20_000
#: Fewest shared directions for a pair of views to constrain their relative scale.
MIN_PAIR_SAMPLES = 20
#: Directions within this angle of a seam count as "at the seam" for the residual.
SEAM_BAND_DEGREES = 3.0
#: Largest width of the equirectangular depth map of a merged scene (0.18° per pixel; the
#: native views have ~0.09°, but a 4096-wide map made the merge 3x slower).
MAX_DEPTH_WIDTH = 2048


@dataclass
class SeamReport:
    """How well neighbouring views agree on depth where they meet.

    Mismatches are relative: ``|d_a - d_b| / d`` (as a fraction, 0.05 = 5 %) of the
    distances two views give for the same direction.

    Attributes:
        samples: directions near a seam where both views had a depth.
        median_before, p95_before: the mismatch with the views' own scales.
        median, p95: the mismatch after reconciliation.
        pairs: median mismatch after reconciliation per seam (``"yaw 0 | up"``).
    """

    samples: int
    median_before: float
    p95_before: float
    median: float
    p95: float
    pairs: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (rounded)."""
        return {
            "samples": self.samples,
            "median_before": round(self.median_before, 5),
            "p95_before": round(self.p95_before, 5),
            "median": round(self.median, 5),
            "p95": round(self.p95, 5),
            "pairs": {k: round(v, 5) for k, v in self.pairs.items()},
        }


def fibonacci_directions(count: int) -> np.ndarray:
    """``count`` unit directions spread evenly over the sphere (a Fibonacci lattice)."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    radius = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    angle = index * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([radius * np.cos(angle), radius * np.sin(angle), z], axis=-1)


def view_distances(view: ViewSpec, gaussians: Gaussians, directions: np.ndarray) -> np.ndarray:
    """Distance from the centre along each direction per the view's depth map; NaN where
    the view does not see the direction (or has no depth there)."""
    out = np.full(len(directions), np.nan)
    depth = gaussians.depth
    if depth is None:
        return out
    cam = directions @ view.rotation.astype(directions.dtype)  # world -> camera (rows)
    z = cam[:, 2]
    front = z > 1e-9
    x = np.where(front, cam[:, 0] / np.where(front, z, 1.0), np.inf)
    y = np.where(front, cam[:, 1] / np.where(front, z, 1.0), np.inf)
    height, width = depth.shape
    photo_w, photo_h = gaussians.image_size
    focal_u = gaussians.focal_px * width / photo_w  # the map may be at another size
    focal_v = gaussians.focal_px * height / photo_h
    with np.errstate(invalid="ignore"):
        u = focal_u * x + width / 2.0 - 0.5
        v = focal_v * y + height / 2.0 - 0.5
        inside = front & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
    if not inside.any():
        return out
    sampled = bilinear(depth[..., None], u[inside], v[inside], wrap_columns=False)[:, 0]
    ray_length = np.sqrt(1.0 + x[inside] ** 2 + y[inside] ** 2)
    distance = sampled * ray_length
    out[inside] = np.where(np.isfinite(distance) & (distance > 0), distance, np.nan)
    return out


def _nearest_axes(directions: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """(M, n) view indices sorted from the nearest optical axis to the farthest."""
    return np.argsort(-(directions @ axes.T), axis=1, kind="stable")


def _log_mismatch(log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    return np.expm1(np.abs(log_a - log_b))


def reconcile_scales(
    views: list[ViewSpec], results: list[Gaussians], *, samples: int = SCALE_SAMPLES
) -> tuple[np.ndarray, SeamReport | None]:
    """One depth scale per view from the overlaps (see the module docstring), and the
    seam residuals. Without depth maps the scales are 1 and there is no report."""
    count = len(views)
    if any(g.depth is None for g in results):
        return np.ones(count), None
    directions = fibonacci_directions(samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(
            np.stack(
                [view_distances(v, g, directions) for v, g in zip(views, results, strict=True)]
            )
        )  # (n, M), NaN where unseen
    rows, targets, weights = [], [], []
    for a in range(count):
        for b in range(a + 1, count):
            shared = np.isfinite(logs[a]) & np.isfinite(logs[b])
            n_shared = int(shared.sum())
            if n_shared < MIN_PAIR_SAMPLES:
                continue
            row = np.zeros(count)
            row[a], row[b] = 1.0, -1.0
            rows.append(row)
            targets.append(float(np.median(logs[b, shared] - logs[a, shared])))
            weights.append(math.sqrt(n_shared))
    log_scales = _solve_log_scales(count, rows, targets, weights)
    report = _seam_report(views, directions, logs, log_scales)
    return np.exp(log_scales), report


def _solve_log_scales(
    count: int, rows: list[np.ndarray], targets: list[float], weights: list[float]
) -> np.ndarray:
    """Weighted least squares for ``x_a - x_b = t_ab`` with ``mean(x) = 0``; views without
    any overlap keep ``x = 0`` (a small ridge)."""
    lhs = [np.array(rows) * np.array(weights)[:, None]] if rows else []
    rhs = [np.array(targets) * np.array(weights)] if rows else []
    lhs += [np.full((1, count), 1e3), np.eye(count) * 1e-6]  # mean 0; a tiny ridge
    rhs += [np.zeros(1), np.zeros(count)]
    solution, *_ = np.linalg.lstsq(np.vstack(lhs), np.concatenate(rhs), rcond=None)
    return solution - solution.mean()


def _seam_report(
    views: list[ViewSpec], directions: np.ndarray, logs: np.ndarray, log_scales: np.ndarray
) -> SeamReport:
    axes = np.stack([v.axis for v in views])
    order = _nearest_axes(directions, axes)
    rows = np.arange(len(directions))
    own, other = order[:, 0], order[:, 1]
    cos_own = np.einsum("ij,ij->i", directions, axes[own])
    cos_other = np.einsum("ij,ij->i", directions, axes[other])
    gap = np.arccos(np.clip(cos_other, -1, 1)) - np.arccos(np.clip(cos_own, -1, 1))
    log_own, log_other = logs[own, rows], logs[other, rows]
    at_seam = (gap < math.radians(SEAM_BAND_DEGREES)) & np.isfinite(log_own + log_other)
    if not at_seam.any():
        return SeamReport(0, math.nan, math.nan, math.nan, math.nan)
    before = _log_mismatch(log_own[at_seam], log_other[at_seam])
    after = _log_mismatch(
        log_own[at_seam] + log_scales[own[at_seam]], log_other[at_seam] + log_scales[other[at_seam]]
    )
    pairs: dict[str, list[float]] = {}
    for a, b, value in zip(own[at_seam], other[at_seam], after, strict=True):
        first, second = sorted((int(a), int(b)))
        pairs.setdefault(f"{views[first].name} | {views[second].name}", []).append(float(value))
    return SeamReport(
        samples=int(at_seam.sum()),
        median_before=float(np.median(before)),
        p95_before=float(np.percentile(before, 95)),
        median=float(np.median(after)),
        p95=float(np.percentile(after, 95)),
        pairs={name: float(np.median(values)) for name, values in sorted(pairs.items())},
    )


def rotation_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a (3, 3) rotation matrix, ``w >= 0``."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = np.array(
        [
            [1 + trace, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]],
            [
                m[2, 1] - m[1, 2],
                1 + m[0, 0] - m[1, 1] - m[2, 2],
                m[0, 1] + m[1, 0],
                m[0, 2] + m[2, 0],
            ],
            [
                m[0, 2] - m[2, 0],
                m[0, 1] + m[1, 0],
                1 - m[0, 0] + m[1, 1] - m[2, 2],
                m[1, 2] + m[2, 1],
            ],
            [
                m[1, 0] - m[0, 1],
                m[0, 2] + m[2, 0],
                m[1, 2] + m[2, 1],
                1 - m[0, 0] - m[1, 1] + m[2, 2],
            ],
        ]
    )  # row k is 4 q_k * q; the largest pivot divides best (Shepperd)
    pivot = int(np.argmax(np.diag(candidates)))
    quaternion = candidates[pivot] / np.linalg.norm(candidates[pivot])
    return quaternion if quaternion[0] >= 0 else -quaternion


def multiply_quaternions(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Hamilton product ``left ⊗ right`` of (..., 4) quaternions (w, x, y, z): the rotation
    ``R(left) @ R(right)``."""
    w1, x1, y1, z1 = np.moveaxis(np.asarray(left), -1, 0)
    w2, x2, y2, z2 = np.moveaxis(np.asarray(right), -1, 0)
    return np.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )


def canonical_sign(quaternions: np.ndarray) -> np.ndarray:
    """Flip (N, 4) quaternions so the first non-zero of (w, x, y, z) is positive (``q`` and
    ``-q`` are the same rotation; the rule of :mod:`mlsharp.unproject`)."""
    q = np.asarray(quaternions)
    nonzero = q != 0
    first = np.argmax(nonzero, axis=1)
    lead = q[np.arange(len(q)), first]
    return np.where((lead < 0)[:, None], -q, q)


def owned_mask(world_positions: np.ndarray, axes: np.ndarray, index: int) -> np.ndarray:
    """Which positions lie in the cell of view ``index`` (its axis is the nearest)."""
    return np.argmax(world_positions @ axes.T, axis=1) == index


def _view_part(view: ViewSpec, gaussians: Gaussians, scale: float, axes: np.ndarray, index: int):
    """The Gaussians of one view that it owns, in the panorama's frame."""
    # float32 throughout: the splats are float32, and the merge touches millions of them.
    positions = np.asarray(gaussians.positions, dtype=np.float32)
    world = positions @ view.rotation.T.astype(np.float32) * np.float32(scale)
    keep = (
        np.isfinite(world).all(axis=1)
        & (positions[:, 2] > 0)
        & np.isfinite(gaussians.scales).all(axis=1)
        & np.isfinite(gaussians.rotations).all(axis=1)
        & owned_mask(world, axes.astype(np.float32), index)
    )
    turn = rotation_quaternion(view.rotation).astype(np.float32)
    rotations = canonical_sign(multiply_quaternions(turn, gaussians.rotations[keep]))
    return (
        world[keep],
        np.asarray(gaussians.scales[keep], dtype=np.float32) * np.float32(scale),
        rotations.astype(np.float32),
        np.asarray(gaussians.colors[keep], dtype=np.float32),
        np.asarray(gaussians.opacities[keep], dtype=np.float32),
    )


def forward_camera(pixels_per_radian: float) -> tuple[float, tuple[int, int]]:
    """``(focal_px, (width, height))`` of the merged scene's forward camera: 90° wide, 4:3,
    at the panorama's resolution."""
    focal = max(8.0, float(pixels_per_radian))
    width = round(2.0 * focal)
    return focal, (width, max(1, round(width * 3 / 4)))


def equirect_depth(
    views: list[ViewSpec], results: list[Gaussians], scales: np.ndarray, width: int
) -> np.ndarray | None:
    """Distance from the centre (float32, ``width/2 x width``, equirectangular, 0 where
    unknown), each direction from the view that owns it; ``None`` without depth maps."""
    if any(g.depth is None for g in results):
        return None
    height = max(1, width // 2)
    directions = equirect_directions(width, height).reshape(-1, 3).astype(np.float32)
    axes = np.stack([v.axis for v in views]).astype(np.float32)
    owner = np.argmax(directions @ axes.T, axis=1)
    depth = np.zeros(len(directions), dtype=np.float32)
    for index, (view, gaussians) in enumerate(zip(views, results, strict=True)):
        mask = owner == index
        distances = view_distances(view, gaussians, directions[mask]) * scales[index]
        depth[mask] = np.nan_to_num(distances, nan=0.0).astype(np.float32)
    return depth.reshape(height, width)


def merge_views(
    views: list[ViewSpec],
    results: list[Gaussians],
    *,
    scales: np.ndarray | None = None,
    pixels_per_radian: float,
    depth_width: int | None = None,
) -> Gaussians:
    """One scene from the views' Gaussians (see the module docstring).

    Args:
        views: the views, in the order of ``results``.
        results: each view's Gaussians in its camera frame.
        scales: each view's depth scale (default 1; see :func:`reconcile_scales`).
        pixels_per_radian: the source panorama's resolution (sizes the forward camera).
        depth_width: width of the equirectangular depth map (default: from the resolution,
            at most :data:`MAX_DEPTH_WIDTH`).
    """
    if len(views) != len(results) or not views:
        raise ValueError(f"{len(views)} views but {len(results)} predictions")
    scales = np.ones(len(views)) if scales is None else np.asarray(scales, dtype=np.float64)
    axes = np.stack([v.axis for v in views])
    parts = [
        _view_part(view, gaussians, float(scale), axes, index)
        for index, (view, gaussians, scale) in enumerate(zip(views, results, scales, strict=True))
    ]
    positions, sizes, rotations, colors, opacities = (
        np.concatenate([part[k] for part in parts]) for k in range(5)
    )
    focal, image_size = forward_camera(pixels_per_radian)
    width = depth_width or min(MAX_DEPTH_WIDTH, 2 * round(math.pi * pixels_per_radian))
    merged = Gaussians(
        positions=positions,
        scales=sizes,
        rotations=rotations,
        colors=colors,
        opacities=opacities,
        focal_px=focal,
        image_size=image_size,
        color_space=results[0].color_space,
        depth=equirect_depth(views, results, scales, max(2, width)),
    )
    merged.metadata["views_kept"] = {
        view.name: len(part[0]) for view, part in zip(views, parts, strict=True)
    }
    return merged
