"""From the network's NDC-scaled output to metric camera space, vectorised.

The network places Gaussians in a space where ``x = z * x_ndc`` with NDC spanning the
internal square image. Undoing the internal resize and the intrinsics is a per-axis scale
``T = diag(W / (2 f), H / (2 f), 1)`` (the principal point sits at the image centre, so
there is no offset). Means map as ``T @ mu``; covariances as ``T R S^2 R^T T``, which are
then re-diagonalised into sorted scales and a rotation, as the reference does.

The reference does that with a float64 SVD on the CPU and a per-matrix SciPy conversion;
here, on the engine's device:

* the *reference path* (default) does one batched symmetric eigendecomposition in float64
  (on the CPU for MPS, which has no float64) and a closed-form matrix-to-quaternion
  conversion, producing the reference values. On ROCm, whose torch has no batched 3x3
  eigensolver (``torch.linalg.eigh`` there solves the 1.18 M matrices of a photo one
  call each), the same decomposition is computed by the Jacobi SVD below in float64:
  elementwise kernels only, equal to the eigendecomposition to float64 rounding;
* the *fast path* (``fast=True``) stays in float32: a batched one-sided Jacobi SVD of the
  3x3 factor ``T R S`` (never forming the covariance, so thin Gaussians keep their relative
  accuracy; float64 is slow or missing on many GPUs). Tests bound its difference from the
  reference path.

Both paths return the same canonical representative of each Gaussian's orientation: an
ellipsoid looks the same after flipping any two principal axes, so the axis columns are
signed (largest-magnitude component positive for the first two, the third completing a
right-handed frame) and the quaternion's first non-zero component (w, then x, y, z) is
positive. The ``.ply`` therefore no longer depends on the eigensolver's sign conventions.

:func:`unproject_tensors` returns float32 tensors on the device; :func:`unproject` also
copies them to the host (see :mod:`mlsharp.runtime.transfer`).

Implementation note: the 3x3 algebra is written per component on length-N vectors
(``Vec3 = (x, y, z)`` of (N,) tensors) rather than with batched ``linalg`` calls on
(N, 3, 3) tensors; on a CPU that is several times faster for millions of tiny matrices,
and on a GPU it is a few hundred elementwise kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlsharp.gaussians import Gaussians
from mlsharp.model.composer import ComposedGaussians
from mlsharp.runtime.transfer import to_host

#: Sweeps of the one-sided Jacobi SVD (each visits the 3 column pairs). The columns of
#: ``T R S`` start nearly orthogonal (only the aspect scaling T skews them) and converge
#: quadratically: measured, the worst cosine between columns is at float32 rounding after
#: four sweeps for random rotations and a 4:3 photo; one more is a margin.
JACOBI_SWEEPS = 5
#: Sweeps of the same Jacobi SVD in float64, the reference path on ROCm GPUs (below):
#: quadratic convergence takes the columns from float32 to float64 rounding in two or
#: three more sweeps; eight leave a margin.
JACOBI_SWEEPS_FLOAT64 = 8

Vec3 = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Quat = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _rotation_columns(w: torch.Tensor, x, y, z) -> tuple[Vec3, Vec3, Vec3]:
    """Columns of the rotation matrix of unit quaternion components (w, x, y, z)."""
    return (
        (1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)),
        (2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)),
        (2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)),
    )


def _stack_columns(columns: tuple[Vec3, Vec3, Vec3]) -> torch.Tensor:
    """Three column Vec3s -> (..., 3, 3) matrices."""
    return torch.stack([torch.stack(column, dim=-1) for column in columns], dim=-1)


def _columns_of(matrices: torch.Tensor) -> tuple[Vec3, Vec3, Vec3]:
    m = matrices
    return tuple(tuple(m[..., i, j] for i in range(3)) for j in range(3))  # type: ignore[return-value]


def quaternions_to_matrices(quaternions: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), any norm -> (..., 3, 3) rotation matrices."""
    q = quaternions / torch.linalg.norm(quaternions, dim=-1, keepdim=True)
    return _stack_columns(_rotation_columns(*q.unbind(-1)))


def _quaternion_of(c0: Vec3, c1: Vec3, c2: Vec3) -> Quat:
    """Unit quaternion of the rotation with columns c0, c1, c2 (Shepperd's method).

    Of the four algebraically equivalent formulas, the one whose pivot (trace or a
    diagonal entry) is largest is used, which keeps the division well away from zero;
    candidate k has 4 q_k^2 at component k. Ties go to the first candidate.
    """
    m00, m10, m20 = c0
    m01, m11, m21 = c1
    m02, m12, m22 = c2
    pivots = (
        1 + m00 + m11 + m22,
        1 + m00 - m11 - m22,
        1 - m00 + m11 - m22,
        1 - m00 - m11 + m22,
    )
    candidates = (
        (pivots[0], m21 - m12, m02 - m20, m10 - m01),
        (m21 - m12, pivots[1], m01 + m10, m02 + m20),
        (m02 - m20, m01 + m10, pivots[2], m12 + m21),
        (m10 - m01, m02 + m20, m12 + m21, pivots[3]),
    )
    p0, p1, p2, p3 = pivots
    use0 = (p0 >= p1) & (p0 >= p2) & (p0 >= p3)
    use1 = ~use0 & (p1 >= p2) & (p1 >= p3)
    use2 = ~use0 & ~use1 & (p2 >= p3)
    quaternion = [
        torch.where(
            use0,
            candidates[0][k],
            torch.where(
                use1, candidates[1][k], torch.where(use2, candidates[2][k], candidates[3][k])
            ),
        )
        for k in range(4)
    ]
    w, x, y, z = quaternion
    norm = torch.sqrt(w * w + x * x + y * y + z * z)
    return tuple(component / norm for component in quaternion)  # type: ignore[return-value]


def matrices_to_quaternions(matrices: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z)."""
    return torch.stack(_quaternion_of(*_columns_of(matrices)), dim=-1)


def _canonical_sign(components: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Flip so the first non-zero component is positive."""
    flip = torch.zeros_like(components[0], dtype=torch.bool)
    decided = torch.zeros_like(flip)
    for component in components:
        flip = flip | (~decided & (component < 0))
        decided = decided | (component != 0)
    return tuple(torch.where(flip, -c, c) for c in components)


def canonical_quaternions(quaternions: torch.Tensor) -> torch.Tensor:
    """Flip (..., 4) quaternions so the first non-zero of (w, x, y, z) is positive.

    ``q`` and ``-q`` are the same rotation; this picks one of them deterministically
    (``w > 0`` in all but measure-zero cases).
    """
    return torch.stack(_canonical_sign(quaternions.unbind(-1)), dim=-1)


def _largest_positive(v: Vec3) -> Vec3:
    """Flip ``v`` so its largest-magnitude component is positive (first index wins ties)."""
    ax, ay, az = (c.abs() for c in v)
    lead = torch.where((ax >= ay) & (ax >= az), v[0], torch.where(ay >= az, v[1], v[2]))
    sign = torch.where(lead < 0, -1.0, 1.0).to(v[0].dtype)
    return (v[0] * sign, v[1] * sign, v[2] * sign)


def _cross(a: Vec3, b: Vec3) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _canonical_frame(u0: Vec3, u1: Vec3) -> tuple[Vec3, Vec3, Vec3]:
    """A right-handed frame from two orthonormal axes, signed canonically: the first two
    axes get their largest-magnitude component positive, the third is ``u0 x u1``."""
    u0, u1 = _largest_positive(u0), _largest_positive(u1)
    return u0, u1, _cross(u0, u1)


def canonical_axes(rotations: torch.Tensor) -> torch.Tensor:
    """Sign the columns (principal axes) of (..., 3, 3) rotations canonically.

    Flipping two axes of an ellipsoid leaves it unchanged, so the Gaussian is the same;
    see :func:`_canonical_frame` for the rule.
    """
    c0, c1, _ = _columns_of(rotations)
    return _stack_columns(_canonical_frame(c0, c1))


def _spans(axis_scale: torch.Tensor, quaternions: torch.Tensor, scales: torch.Tensor):
    """Columns of M = T R S (cov = M M^T) from (N, 4) quaternions and (N, 3) scales."""
    q = quaternions / torch.linalg.norm(quaternions, dim=-1, keepdim=True)
    columns = _rotation_columns(*q.unbind(-1))
    t = axis_scale.tolist()
    return tuple(tuple(t[i] * columns[j][i] * scales[:, j] for i in range(3)) for j in range(3))


def _axes_reference(spans: tuple[Vec3, Vec3, Vec3]) -> tuple[Vec3, tuple[Vec3, Vec3, Vec3]]:
    m = _stack_columns(spans)
    eigenvalues, eigenvectors = torch.linalg.eigh(m @ m.transpose(-1, -2))  # ascending
    scales = eigenvalues.clamp_min(0).sqrt()
    columns = _columns_of(eigenvectors)
    frame = _canonical_frame(columns[2], columns[1])
    return (scales[:, 2], scales[:, 1], scales[:, 0]), frame


def _axes_fast(
    spans: tuple[Vec3, Vec3, Vec3], sweeps: int, dtype: torch.dtype = torch.float32
) -> tuple[Vec3, tuple[Vec3, Vec3, Vec3]]:
    columns = [tuple(c.to(dtype).contiguous() for c in column) for column in spans]
    for _ in range(sweeps):
        for p, q in ((0, 1), (0, 2), (1, 2)):
            a, b = columns[p], columns[q]
            alpha = a[0] * a[0] + a[1] * a[1] + a[2] * a[2]
            beta = b[0] * b[0] + b[1] * b[1] + b[2] * b[2]
            gamma = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
            zeta = (beta - alpha) / (2.0 * gamma)
            # The smaller root of t^2 + 2 zeta t - 1 = 0 (a turn of at most 45 degrees).
            # gamma == 0 (already orthogonal) gives zeta = +-inf -> t = 0, or 0/0 -> NaN
            # when the norms are equal too, which is also mapped to t = 0.
            t = torch.copysign(1.0 / (zeta.abs() + torch.sqrt(1.0 + zeta * zeta)), zeta)
            t = torch.nan_to_num(t, nan=0.0)
            c = torch.rsqrt(1.0 + t * t)
            s = c * t
            columns[p] = tuple(c * ai - s * bi for ai, bi in zip(a, b, strict=True))
            columns[q] = tuple(s * ai + c * bi for ai, bi in zip(a, b, strict=True))
    norms = [torch.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) for v in columns]
    # Sort descending with a 3-element sorting network of conditional swaps.
    for p, q in ((0, 1), (0, 2), (1, 2)):
        swap = norms[p] < norms[q]
        norms[p], norms[q] = (
            torch.where(swap, norms[q], norms[p]),
            torch.where(swap, norms[p], norms[q]),
        )
        a, b = columns[p], columns[q]
        columns[p] = tuple(torch.where(swap, bi, ai) for ai, bi in zip(a, b, strict=True))
        columns[q] = tuple(torch.where(swap, ai, bi) for ai, bi in zip(a, b, strict=True))
    tiny = torch.finfo(dtype).tiny
    (x0, y0, z0), (x1, y1, z1) = columns[0], columns[1]
    n0, n1 = norms[0].clamp_min(tiny), norms[1].clamp_min(tiny)
    u0, u1 = (x0 / n0, y0 / n0, z0 / n0), (x1 / n1, y1 / n1, z1 / n1)
    return (norms[0], norms[1], norms[2]), _canonical_frame(u0, u1)


def principal_axes_reference(spans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 3) factors M (covariance M M^T) -> (scales descending, canonical rotations).

    The reference path: a symmetric eigendecomposition of the covariance in the input's
    precision (float64 in :func:`unproject`).
    """
    scales, frame = _axes_reference(_columns_of(spans))
    return torch.stack(scales, dim=-1), _stack_columns(frame)


def principal_axes_fast(
    spans: torch.Tensor, sweeps: int = JACOBI_SWEEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 3) factors M -> (scales descending, canonical rotations), float32.

    One-sided Jacobi: rotates pairs of columns of M until they are orthogonal; then
    M V = U diag(s) with the column norms ``s`` (singular values of M = square roots of
    the covariance's eigenvalues) and the normalised columns ``U`` (its eigenvectors).
    Working on M rather than M M^T keeps small scales relatively accurate in float32
    (Demmel & Veselic, 1992: M = (T R) S with T R well conditioned and S diagonal).
    """
    scales, frame = _axes_fast(_columns_of(spans), sweeps)
    return torch.stack(scales, dim=-1), _stack_columns(frame)


def uses_jacobi_reference(device: torch.device, hip_version: str | None) -> bool:
    """Whether the reference decomposition on ``device`` is the float64 Jacobi SVD instead of
    ``torch.linalg.eigh``: on ROCm GPUs (``torch.version.hip`` set, device type ``cuda``)."""
    return device.type == "cuda" and hip_version is not None


def principal_axes_jacobi64(spans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 3) float64 factors M -> (scales descending, canonical rotations) by the
    float64 Jacobi SVD: the reference path on ROCm (module docstring)."""
    scales, frame = _axes_fast(_columns_of(spans), JACOBI_SWEEPS_FLOAT64, torch.float64)
    return torch.stack(scales, dim=-1), _stack_columns(frame)


def unproject_tensors(
    composed: ComposedGaussians,
    *,
    focal_px: float,
    image_size: tuple[int, int],
    index: int = 0,
    fast: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Batch item ``index`` of the network output as metric float32 tensors on its device.

    Returns ``positions``, ``scales``, ``rotations`` (canonical quaternions), ``colors``,
    ``opacities`` and ``depth`` (the first layer's depth at the photo's size, or ``None``).
    ``fast`` selects the float32 decomposition (see the module docstring).
    """
    width, height = image_size
    device = composed.mean_vectors.device
    if fast:
        work_device, dtype = device, torch.float32
    else:
        # float64 on MPS is unsupported: decompose on the CPU there.
        work_device = torch.device("cpu") if device.type == "mps" else device
        dtype = torch.float64
    axis_scale = torch.tensor(
        [width / (2.0 * focal_px), height / (2.0 * focal_px), 1.0], dtype=dtype
    )
    means = composed.mean_vectors[index].to(work_device, dtype) * axis_scale.to(work_device)
    spans = _spans(
        axis_scale,
        composed.quaternions[index].to(work_device, dtype),
        composed.singular_values[index].to(work_device, dtype),
    )
    if fast:
        scales, frame = _axes_fast(spans, JACOBI_SWEEPS)
    elif uses_jacobi_reference(work_device, torch.version.hip):
        scales, frame = _axes_fast(spans, JACOBI_SWEEPS_FLOAT64, torch.float64)
    else:
        scales, frame = _axes_reference(spans)
    quaternion = _canonical_sign(_quaternion_of(*frame))

    depth = None
    if composed.depth is not None:
        # The network's depth is square (internal resolution); stretch it back to the photo.
        depth_map = composed.depth[index][None, None].float()
        depth = F.interpolate(depth_map, size=(height, width), mode="bilinear")[0, 0]

    return {
        "positions": means.float(),
        "scales": torch.stack(scales, dim=-1).float(),
        "rotations": torch.stack(quaternion, dim=-1).float(),
        "colors": composed.colors[index].float(),
        "opacities": composed.opacities[index].float(),
        "depth": depth,
    }


def gaussians_from_host(arrays: dict, *, focal_px: float, image_size: tuple[int, int]) -> Gaussians:
    """Wrap host arrays from :func:`unproject_tensors` + ``to_host`` as :class:`Gaussians`."""
    return Gaussians(
        positions=arrays["positions"],
        scales=arrays["scales"],
        rotations=arrays["rotations"],
        colors=arrays["colors"],
        opacities=arrays["opacities"],
        focal_px=float(focal_px),
        image_size=(int(image_size[0]), int(image_size[1])),
        color_space="linearRGB",
        depth=arrays["depth"],
    )


def unproject(
    composed: ComposedGaussians,
    *,
    focal_px: float,
    image_size: tuple[int, int],
    index: int = 0,
    fast: bool = False,
) -> Gaussians:
    """Convert batch item ``index`` of the network output to metric :class:`Gaussians`.

    Args:
        composed: network output (B, N, C) tensors on any device.
        focal_px: focal length in pixels of the input image.
        image_size: (width, height) of the input image.
        index: which batch item to convert.
        fast: use the float32 decomposition instead of the float64 reference.
    """
    tensors = unproject_tensors(
        composed, focal_px=focal_px, image_size=image_size, index=index, fast=fast
    )
    return gaussians_from_host(to_host(tensors), focal_px=focal_px, image_size=image_size)
