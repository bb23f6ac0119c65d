"""How far a fast path's Gaussians are from the fp32 reference on the same input.

One error measure per property, chosen so that it means the same for every scene:

=========== ============================================================== ===========
property    error of one Gaussian                                          unit
=========== ============================================================== ===========
positions   ``|p - p_ref| / |p_ref|`` (displacement relative to distance)  relative
scales      ``|log(s / s_ref)|`` per axis (symmetric relative error)       log ratio
rotations   angle between matching principal axes, ``acos(|a . a_ref|)``,  degrees
            only for axes whose scale differs by >= 10 % from its
            neighbours (otherwise the axis is arbitrary: a disc or sphere
            has no preferred in-plane direction). Sign-invariant, so the
            quaternion's sign does not matter.
colors      ``|c - c_ref|`` per channel (linear RGB)                       absolute
opacities   ``|o - o_ref|``                                                absolute
=========== ============================================================== ===========

For each property the mean, the 99th percentile and the maximum over all Gaussians are
reported; the mean and the 99th percentile are gated by :data:`THRESHOLDS`. The maximum
is not gated: where the photo has a depth discontinuity, the Gaussian on the edge pixel
legitimately lands on either side in two runs whose depths differ by 0.1 %, so a single
Gaussian's error can be 100 % in a perfectly good fast path. The 99th percentile still
catches a systematic error that touches more than 1 % of the scene.

NumPy only (the inputs are :class:`~mlsharp.gaussians.Gaussians` on the host).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlsharp.gaussians import Gaussians

__all__ = [
    "AXIS_SEPARATION",
    "PROPERTIES",
    "THRESHOLDS",
    "PropertyError",
    "Tolerance",
    "compare_gaussians",
    "threshold_failures",
]

PROPERTIES: tuple[str, ...] = ("positions", "scales", "rotations", "colors", "opacities")

#: A principal axis is compared only when its scale differs from each neighbour's by this
#: factor (10 %): below that the eigenvector is ill-conditioned and any direction is right.
AXIS_SEPARATION = 1.10


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted mean and 99th-percentile error of one property."""

    mean: float
    p99: float
    unit: str


#: Accepted error of a fast path against fp32, per property. Why these values:
#: bf16 keeps 8 significant bits (relative rounding 2**-9 = 0.2 %); after the ViT-L, the
#: DPT decoder and the depth activation a few of those accumulate, so a sound bf16 path
#: lands around 0.2-0.5 % mean relative error in positions and scales. The limits allow
#: 2-5x that on average and 5-10 % for the worst 1 % (edges, see the module docstring),
#: which is well below what is visible in a rendered splat (a 1 % depth error at 3 m is
#: 3 cm), while a broken path (wrong layout, overflow, a skipped fp32 head) is off by
#: tens of percent. Colours and opacities are in [0, 1]: 0.01 is 2.5 / 255, invisible.
#: Rotations are loose because an axis just above the 10 % separation still swings.
THRESHOLDS: dict[str, Tolerance] = {
    "positions": Tolerance(mean=0.01, p99=0.05, unit="relative"),
    "scales": Tolerance(mean=0.02, p99=0.10, unit="log ratio"),
    "rotations": Tolerance(mean=2.0, p99=15.0, unit="degrees"),
    "colors": Tolerance(mean=0.01, p99=0.05, unit="absolute"),
    "opacities": Tolerance(mean=0.01, p99=0.05, unit="absolute"),
}


@dataclass(frozen=True)
class PropertyError:
    """Error statistics of one property over all Gaussians (``count`` values)."""

    mean: float
    p99: float
    max: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PropertyError:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=float(data["mean"]),
            p99=float(data["p99"]),
            max=float(data["max"]),
            count=int(data["count"]),
        )


def _stats(values: np.ndarray) -> PropertyError:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return PropertyError(0.0, 0.0, 0.0, 0)
    # A NaN or inf anywhere is an infinite error (it would break every renderer).
    if not np.isfinite(values).all():
        return PropertyError(float("inf"), float("inf"), float("inf"), int(values.size))
    return PropertyError(
        mean=float(values.mean()),
        p99=float(np.percentile(values, 99)),
        max=float(values.max()),
        count=int(values.size),
    )


def _rotation_matrices(q: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z) -> (N, 3, 3) matrices (columns: principal axes)."""
    q = q.astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def _axis_angles(reference: Gaussians, candidate: Gaussians) -> np.ndarray:
    """Degrees between matching well-separated principal axes (see the module docstring)."""
    s = reference.scales.astype(np.float64)
    tiny = np.finfo(np.float64).tiny
    gap01 = s[:, 0] >= AXIS_SEPARATION * np.maximum(s[:, 1], tiny)
    gap12 = s[:, 1] >= AXIS_SEPARATION * np.maximum(s[:, 2], tiny)
    defined = np.stack([gap01, gap01 & gap12, gap12], axis=1)  # (N, 3): axis i is defined
    if not defined.any():
        return np.zeros(0)
    a = _rotation_matrices(reference.rotations)
    b = _rotation_matrices(candidate.rotations)
    cosines = np.abs(np.einsum("nij,nij->nj", a, b))  # column-wise dot products
    return np.degrees(np.arccos(np.clip(cosines[defined], 0.0, 1.0)))


def compare_gaussians(reference: Gaussians, candidate: Gaussians) -> dict[str, PropertyError]:
    """Per-property error statistics of ``candidate`` against ``reference`` (same input).

    Raises:
        ValueError: the two sets differ in size (not the same input or model).
    """
    if len(reference) != len(candidate):
        raise ValueError(
            f"cannot compare {len(candidate)} Gaussians with a reference of {len(reference)}"
        )
    ref_pos = reference.positions.astype(np.float64)
    distance = np.maximum(np.linalg.norm(ref_pos, axis=1), np.finfo(np.float32).tiny)
    displacement = np.linalg.norm(candidate.positions.astype(np.float64) - ref_pos, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A scale of 0 against a positive one is an infinite ratio: report it as such.
        log_ratio = np.abs(
            np.log(candidate.scales.astype(np.float64))
            - np.log(reference.scales.astype(np.float64))
        )
    log_ratio = np.where(
        (candidate.scales == reference.scales), 0.0, log_ratio
    )  # 0/0 and equal values
    return {
        "positions": _stats(displacement / distance),
        "scales": _stats(log_ratio),
        "rotations": _stats(_axis_angles(reference, candidate)),
        "colors": _stats(np.abs(candidate.colors.astype(np.float64) - reference.colors)),
        "opacities": _stats(np.abs(candidate.opacities.astype(np.float64) - reference.opacities)),
    }


def threshold_failures(
    errors: dict[str, PropertyError], thresholds: dict[str, Tolerance] | None = None
) -> list[str]:
    """Why ``errors`` are not acceptable, one phrase per exceeded limit (empty: accepted)."""
    limits = THRESHOLDS if thresholds is None else thresholds
    reasons = []
    for name in PROPERTIES:
        error, limit = errors.get(name), limits.get(name)
        if error is None or limit is None:
            continue
        if not error.mean <= limit.mean:  # `not <=` so that NaN fails
            reasons.append(f"{name} mean {error.mean:.3g} > {limit.mean:g} ({limit.unit})")
        if not error.p99 <= limit.p99:
            reasons.append(f"{name} p99 {error.p99:.3g} > {limit.p99:g} ({limit.unit})")
    return reasons
