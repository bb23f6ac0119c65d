"""Unprojection: quaternion conversions and covariance re-decomposition."""

from __future__ import annotations

import numpy as np
import torch

from mlsharp.model.composer import ComposedGaussians
from mlsharp.unproject import matrices_to_quaternions, quaternions_to_matrices, unproject


def _random_quaternions(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_quaternion_matrix_round_trip_is_exact_up_to_sign():
    q = _random_quaternions(10_000)
    q = q / q.norm(dim=-1, keepdim=True)
    rotations = quaternions_to_matrices(q)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(len(q), dtype=q.dtype))
    back = matrices_to_quaternions(rotations)
    # q and -q are the same rotation.
    assert torch.allclose((back * q).sum(-1).abs(), torch.ones(len(q), dtype=q.dtype))


def test_matrices_to_quaternions_handles_every_pivot_branch():
    # 180-degree turns about each axis have trace -1: the trace formula would divide by ~0.
    for axis in range(3):
        q = torch.zeros(1, 4, dtype=torch.float64)
        q[0, axis + 1] = 1.0
        back = matrices_to_quaternions(quaternions_to_matrices(q))
        assert torch.allclose(back.abs(), q.abs())


def _composed(n: int, seed: int = 1) -> ComposedGaussians:
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(1, n, 3, generator=gen) + torch.tensor([-0.5, -0.5, 1.0])
    return ComposedGaussians(
        mean_vectors=means,
        singular_values=torch.rand(1, n, 3, generator=gen) * 0.05 + 0.01,
        quaternions=torch.randn(1, n, 4, generator=gen),
        colors=torch.rand(1, n, 3, generator=gen),
        opacities=torch.rand(1, n, generator=gen),
    )


def test_unproject_scales_axes_and_preserves_covariance():
    composed = _composed(2000)
    width, height, focal = 640, 480, 500.0
    g = unproject(composed, focal_px=focal, image_size=(width, height))
    scale = np.array([width / (2 * focal), height / (2 * focal), 1.0])
    np.testing.assert_allclose(g.positions, composed.mean_vectors[0].numpy() * scale, rtol=1e-6)

    def covariance(quats, scales):
        r = quaternions_to_matrices(torch.as_tensor(quats, dtype=torch.float64)).numpy()
        return r @ (np.asarray(scales, dtype=np.float64)[:, :, None] ** 2 * r.transpose(0, 2, 1))

    before = covariance(composed.quaternions[0].numpy(), composed.singular_values[0].numpy())
    expected = scale[:, None] * before * scale[None, :]
    got = covariance(g.rotations, g.scales)
    rel = np.linalg.norm(got - expected, axis=(1, 2)) / np.linalg.norm(expected, axis=(1, 2))
    assert rel.max() < 1e-5
    assert (np.diff(g.scales, axis=1) <= 0).all(), "scales sorted descending"
    np.testing.assert_allclose(np.linalg.norm(g.rotations, axis=1), 1.0, rtol=1e-6)
    assert g.image_size == (640, 480) and g.focal_px == focal
    assert g.positions.dtype == np.float32 and g.positions.flags.c_contiguous


def test_float64_jacobi_equals_the_eigendecomposition_reference():
    # The reference path on ROCm (no batched eigensolver there): same scales, same
    # covariance and the same canonical rotation wherever the axes are distinct.
    from mlsharp.unproject import (
        principal_axes_jacobi64,
        principal_axes_reference,
        uses_jacobi_reference,
    )

    gen = torch.Generator().manual_seed(4)
    n = 20_000
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    scales = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 0.05 + 1e-4
    scales[:500, 1] = scales[:500, 0]  # two equal axes (a degenerate plane)
    scales[500:1000] *= torch.tensor([1.0, 1e-3, 1e-4], dtype=torch.float64)  # thin
    rotations = quaternions_to_matrices(q / q.norm(dim=-1, keepdim=True))
    aspect = torch.tensor([0.64, 0.48, 1.0], dtype=torch.float64)
    spans = aspect[None, :, None] * rotations * scales[:, None, :]  # T R S

    ref_scales, ref_rot = principal_axes_reference(spans)
    got_scales, got_rot = principal_axes_jacobi64(spans)
    assert got_scales.dtype == torch.float64
    # Both to float64 rounding relative to the largest axis. (On thin Gaussians the Jacobi
    # SVD of M is the more accurate one: eigh of M M^T squares the condition number.)
    truth = torch.linalg.svdvals(spans)
    assert ((got_scales - truth).abs() / truth[:, :1]).max() < 1e-12
    assert ((got_scales - ref_scales).abs() / ref_scales[:, :1]).max() < 1e-9

    def covariance(rot, s):
        return rot @ torch.diag_embed(s**2) @ rot.transpose(-1, -2)

    expected = covariance(ref_rot, ref_scales)
    diff = (covariance(got_rot, got_scales) - expected).flatten(1).norm(dim=1)
    assert (diff / expected.flatten(1).norm(dim=1)).max() < 1e-10
    gaps = (ref_scales[:, :-1] - ref_scales[:, 1:]).min(dim=1).values / ref_scales[:, 0]
    distinct = gaps > 1e-4
    assert distinct.sum() > n // 2
    assert (got_rot[distinct] - ref_rot[distinct]).abs().max() < 1e-8
    assert torch.allclose(torch.linalg.det(got_rot), torch.ones(n, dtype=torch.float64))
    assert uses_jacobi_reference(torch.device("cuda"), "6.4")
    assert not uses_jacobi_reference(torch.device("cuda"), None)
    assert not uses_jacobi_reference(torch.device("cpu"), "6.4")
