"""Brute-force reference renderers for the tests: no tiles, no bounding boxes, float64.

Every splat is evaluated at every pixel, in depth order, one splat at a time, with the
3DGS / gsplat rules written out plainly (alpha = min(0.99, o exp(-d²/2)), skipped below
1/255; a pixel stops at the first splat that would bring its transmittance to <= 1e-4).
"""

from __future__ import annotations

import numpy as np


def composite_bruteforce(
    means: np.ndarray,
    conics: np.ndarray,
    opacities: np.ndarray,
    colors: np.ndarray,
    depths: np.ndarray,
    width: int,
    height: int,
    background: np.ndarray,
    max_alpha: float = 0.99,
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) colour and (H, W) alpha of 2D splats, composited pixel by pixel."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    color = np.zeros((height, width, 3))
    trans = np.ones((height, width))
    done = np.zeros((height, width), dtype=bool)
    for i in np.argsort(depths, kind="stable"):
        dx, dy = xs - means[i, 0], ys - means[i, 1]
        a, b, c = conics[i]
        d2 = a * dx * dx + 2 * b * dx * dy + c * dy * dy
        alpha = np.minimum(max_alpha, opacities[i] * np.exp(-0.5 * d2))
        alpha = np.where(alpha < 1 / 255, 0.0, alpha)
        next_t = trans * (1 - alpha)
        live = ~done & (alpha > 0)
        stop = live & (next_t <= 1e-4)
        add = live & ~stop
        color += np.where(add, alpha * trans, 0.0)[..., None] * colors[i]
        trans = np.where(add, next_t, trans)
        done |= stop
    return color + trans[..., None] * background, 1 - trans


def project_reference(
    positions: np.ndarray,
    scales: np.ndarray,
    rotations: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    focal: tuple[float, float],
    centre: tuple[float, float],
    size: tuple[int, int],
    low_pass: float,
) -> dict[str, np.ndarray]:
    """EWA projection in float64, written as the textbook formulas (one splat at a time).

    Returns means, conics and depths of the splats in front of the near plane (0.01)
    plus the boolean ``kept`` mask over the input.
    """
    fx, fy = focal
    cx, cy = centre
    width, height = size
    means, conics, depths, kept = [], [], [], []
    for p, s, q in zip(positions, scales, rotations, strict=True):
        w, x, y, z = q / np.linalg.norm(q)
        r = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )
        cov_world = r @ np.diag(np.asarray(s, np.float64) ** 2) @ r.T
        t = rotation @ p + translation
        if t[2] <= 0.01:
            kept.append(False)
            continue
        kept.append(True)
        lim_x = (cx / fx + 0.15 * width / fx, (width - cx) / fx + 0.15 * width / fx)
        lim_y = (cy / fy + 0.15 * height / fy, (height - cy) / fy + 0.15 * height / fy)
        tx = t[2] * np.clip(t[0] / t[2], -lim_x[0], lim_x[1])
        ty = t[2] * np.clip(t[1] / t[2], -lim_y[0], lim_y[1])
        jac = np.array([[fx / t[2], 0, -fx * tx / t[2] ** 2], [0, fy / t[2], -fy * ty / t[2] ** 2]])
        cov2d = jac @ rotation @ cov_world @ rotation.T @ jac.T + low_pass * np.eye(2)
        inv = np.linalg.inv(cov2d)
        means.append([fx * t[0] / t[2] + cx, fy * t[1] / t[2] + cy])
        conics.append([inv[0, 0], inv[0, 1], inv[1, 1]])
        depths.append(t[2])
    return {
        "means": np.array(means).reshape(-1, 2),
        "conics": np.array(conics).reshape(-1, 3),
        "depths": np.array(depths),
        "kept": np.array(kept, dtype=bool),
    }
