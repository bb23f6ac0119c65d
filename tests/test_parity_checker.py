"""The parity comparator (tests/parity.py) on small PLY files written with NumPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.parity import (
    COVARIANCE,
    FIXTURES_DIR,
    VERTEX_PROPERTIES,
    compare_to_reference,
    group_passes,
    load_fixture,
    make_reference_fixture,
    vertex_errors,
)

# Non-vertex elements of the reference layout: name -> (PLY type, NumPy dtype).
ELEMENT_TYPES = {
    "extrinsic": ("float", "<f4"),
    "intrinsic": ("float", "<f4"),
    "image_size": ("uint", "<u4"),
    "frame": ("int", "<i4"),
    "disparity": ("float", "<f4"),
    "color_space": ("uchar", "u1"),
    "version": ("uchar", "u1"),
}


def random_gaussians(n: int, seed: int = 0) -> np.ndarray:
    """``[n, 14]`` float32 rows in the reference's value ranges (scales sorted descending)."""
    rng = np.random.default_rng(seed)
    v = np.empty((n, 14), dtype=np.float32)
    v[:, 0:2] = rng.uniform(-0.3, 0.3, (n, 2))
    v[:, 2] = rng.uniform(0.6, 1.3, n)
    v[:, 3:6] = rng.uniform(-1.7, 1.7, (n, 3))
    v[:, 6] = rng.normal(-0.25, 0.22, n)
    v[:, 7:10] = -np.sort(-rng.normal([-6.1, -7.1, -7.5], 0.2, (n, 3)), axis=1)
    q = rng.normal(size=(n, 4))
    v[:, 10:14] = q / np.linalg.norm(q, axis=1, keepdims=True)
    return v


def default_elements(values: np.ndarray, size: tuple[int, int] = (64, 48)) -> dict[str, list]:
    """Non-vertex element values as ml-sharp writes them."""
    w, h = size
    f = 100.0
    disparity = np.quantile(1.0 / values[:, 2].astype(np.float64), [0.1, 0.9])
    return {
        "extrinsic": np.eye(4).ravel().tolist(),
        "intrinsic": [f, 0, w / 2, 0, f, h / 2, 0, 0, 1],
        "image_size": [w, h],
        "frame": [1, len(values)],
        "disparity": disparity.tolist(),
        "color_space": [0],
        "version": [1, 5, 0],
    }


def write_ply(
    path: Path,
    values: np.ndarray,
    elements: dict[str, list],
    order: tuple[str, ...] = VERTEX_PROPERTIES,
    types: dict[str, tuple[str, str]] = ELEMENT_TYPES,
) -> Path:
    """Write a binary little-endian PLY in the reference layout (vertex columns in ``order``)."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {len(values)}"]
    lines += [f"property float {name}" for name in order]
    for name, vals in elements.items():
        lines += [f"element {name} {len(vals)}", f"property {types[name][0]} {name}"]
    lines.append("end_header")
    columns = [values[:, VERTEX_PROPERTIES.index(name)] for name in order]
    body = np.stack(columns, axis=1).astype("<f4").tobytes()
    body += b"".join(np.asarray(v, dtype=types[k][1]).tobytes() for k, v in elements.items())
    path.write_bytes(("\n".join(lines) + "\n").encode("ascii") + body)
    return path


@pytest.fixture
def fixture_dir(tmp_path: Path) -> tuple[Path, np.ndarray, dict[str, list]]:
    """A reference made from a random 5000-Gaussian PLY, stride 7."""
    values = random_gaussians(5000)
    elements = default_elements(values)
    ply = write_ply(tmp_path / "ref.ply", values, elements)
    make_reference_fixture(ply, tmp_path / "fixtures", "tiny.png", stride=7)
    return tmp_path / "fixtures", values, elements


def failing(report) -> list[str]:
    return [c.name for c in report.failures]


def rotate(quats: np.ndarray, angle: float, axis: np.ndarray) -> np.ndarray:
    """Left-multiply (w, x, y, z) quaternions by a rotation of ``angle`` about ``axis``."""
    axis = axis / np.linalg.norm(axis)
    w1, (x1, y1, z1) = np.cos(angle / 2), np.sin(angle / 2) * axis
    w2, x2, y2, z2 = quats.T
    return np.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=1,
    )


def test_covariance_error_ignores_quaternion_sign_and_norm() -> None:
    ref = random_gaussians(500).astype(np.float64)
    got = ref.copy()
    got[::2, 10:14] *= -1.0
    got[1::2, 10:14] *= 3.0
    errs = vertex_errors(got, ref)
    assert errs[COVARIANCE].max() < 1e-12
    assert all(errs[k].max() == 0 for k in errs if k != COVARIANCE)


def test_covariance_error_detects_a_rotation() -> None:
    ref = random_gaussians(500).astype(np.float64)
    got = ref.copy()
    got[:, 10:14] = rotate(ref[:, 10:14], np.deg2rad(2.0), np.array([0.3, -0.5, 0.8]))
    errs = vertex_errors(got, ref)[COVARIANCE]
    assert errs.min() > 1e-3 and np.median(errs) > 0.01  # tolerance 1e-3
    # With equal scales the rotation is irrelevant (eigenvector degeneracy is free).
    ref[:, 7:10] = got[:, 7:10] = -6.0
    assert vertex_errors(got, ref)[COVARIANCE].max() < 1e-12


def test_outlier_pass_rule() -> None:
    tol, frac, factor = 1e-3, 0.001, 10.0
    e = np.full(2000, 1e-4)
    assert group_passes(e, tol, frac, factor)
    e[:2] = 5e-3  # 0.1 % above tol, below 10x: allowed
    assert group_passes(e, tol, frac, factor)
    e[2] = 5e-3  # 0.15 % above tol
    assert not group_passes(e, tol, frac, factor)
    e = np.full(2000, 1e-4)
    e[0] = 1.1e-2  # a single sample above outlier_factor * tol
    assert not group_passes(e, tol, frac, factor)
    e[0] = np.nan
    assert not group_passes(e, tol, frac, factor)


def test_identical_file_passes(fixture_dir, tmp_path: Path) -> None:
    fixtures, _, elements = fixture_dir
    report = compare_to_reference(tmp_path / "ref.ply", "tiny.png", fixtures)
    assert report.passed, report.format()
    assert report.max_normalised_error == 0.0
    names = [c.name for c in report.checks]
    assert names[0] == "header layout"
    assert {f"element {k}" for k in elements} <= set(names)
    assert {"vertex position", f"vertex {COVARIANCE}", "stats x", "stats scale_2"} <= set(names)
    assert "PASS" in report.format().splitlines()[0]
    # The stem also names the image.
    assert compare_to_reference(tmp_path / "ref.ply", "tiny", fixtures).passed


def test_position_perturbation_fails(fixture_dir, tmp_path: Path) -> None:
    fixtures, values, elements = fixture_dir
    moved = values.copy()
    moved[:, :3] *= 1.0 + 1e-3
    report = compare_to_reference(write_ply(tmp_path / "m.ply", moved, elements), "tiny", fixtures)
    assert not report.passed
    assert "vertex position" in failing(report)
    position = next(c for c in report.checks if c.name == "vertex position")
    assert position.max_error == pytest.approx(1e-3, rel=1e-3)
    assert report.max_normalised_error >= 19
    assert "FAIL" in report.format().splitlines()[0]
    # Small noise (well below the tolerance) still passes.
    noisy = values.copy()
    noisy[:, :3] *= 1.0 + 5e-6
    report = compare_to_reference(write_ply(tmp_path / "n.ply", noisy, elements), "tiny", fixtures)
    assert report.passed, report.format()


def test_wrong_property_order_fails_the_header(fixture_dir, tmp_path: Path) -> None:
    fixtures, values, elements = fixture_dir
    order = list(VERTEX_PROPERTIES)
    order[6], order[7] = order[7], order[6]  # scale_0 before opacity
    ply = write_ply(tmp_path / "o.ply", values, elements, order=tuple(order))
    report = compare_to_reference(ply, "tiny", fixtures)
    assert failing(report) == ["header layout"]  # values are read by name and still match
    assert "vertex" in report.checks[0].detail

    types = dict(ELEMENT_TYPES, image_size=("int", "<i4"))
    ply = write_ply(tmp_path / "t.ply", values, elements, types=types)
    assert failing(compare_to_reference(ply, "tiny", fixtures)) == ["header layout"]


def test_element_tolerances(fixture_dir, tmp_path: Path) -> None:
    fixtures, values, elements = fixture_dir
    close = dict(elements, disparity=[d * (1 + 5e-5) for d in elements["disparity"]])
    assert compare_to_reference(
        write_ply(tmp_path / "a.ply", values, close), "tiny", fixtures
    ).passed
    far = dict(elements, disparity=[d * (1 + 2e-4) for d in elements["disparity"]])
    report = compare_to_reference(write_ply(tmp_path / "b.ply", values, far), "tiny", fixtures)
    assert failing(report) == ["element disparity"]
    frame = dict(elements, frame=[1, len(values) + 1])
    report = compare_to_reference(write_ply(tmp_path / "c.ply", values, frame), "tiny", fixtures)
    assert failing(report) == ["element frame"]


def test_nan_and_stats(fixture_dir, tmp_path: Path) -> None:
    fixtures, values, elements = fixture_dir
    bad = values.copy()
    bad[7, 6] = np.nan  # row 7 is sample row 1
    report = compare_to_reference(write_ply(tmp_path / "n.ply", bad, elements), "tiny", fixtures)
    assert "vertex opacity" in failing(report)
    assert report.max_normalised_error == np.inf
    # Rows outside the subsample are only seen by the statistics.
    shifted = values.copy()
    outside = np.arange(len(values)) % 7 != 0
    shifted[outside, 6] += 0.01
    report = compare_to_reference(
        write_ply(tmp_path / "s.ply", shifted, elements), "tiny", fixtures
    )
    assert failing(report) == ["stats opacity"]


def test_real_fixture_layout_and_sample(tmp_path: Path) -> None:
    """A full-size PLY holding the reference sample rows matches everything but the stats."""
    name, _, meta, sample = load_fixture(FIXTURES_DIR, "astronaut.jpg")
    values = random_gaussians(meta["vertex_count"], seed=1)
    values[sample["index"]] = sample["values"]
    ply = write_ply(tmp_path / "astronaut.ply", values, meta["elements"])
    report = compare_to_reference(ply, name)
    assert report.checks[0].passed, report.format()
    assert failing(report) and all(n.startswith("stats ") for n in failing(report))
