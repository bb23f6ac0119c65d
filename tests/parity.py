"""Parity comparator: a produced SHARP ``.ply`` against the ml-sharp reference fixtures.

The rules (tolerances and their definitions) live in ``data/parity/reference.json``:

* header layout: element names and counts, property names, types and order, format;
* non-vertex elements: exact, or within the relative tolerance of ``tolerances.elements``;
* the vertex subsample ``samples/<stem>.npz`` (rows 0, 101, 202, ...), index-wise, per group:
  position ``|p - p_ref| / |p_ref|``; ``f_dc_*``, ``opacity``, ``scale_*`` absolute;
  covariance ``||S - S_ref||_F / ||S_ref||_F`` with ``S = R(q) diag(exp(2 s)) R(q)^T``.
  A group passes when at most ``max_outlier_fraction`` of the samples exceed ``tol`` and
  none exceeds ``outlier_factor * tol``;
* summary statistics (mean, std, min, max, 9 quantiles) of ``x .. scale_2`` over all vertices,
  as ``|stat - stat_ref| / std_ref`` against ``tolerances.stats``.

The PLY is read with ``plyfile`` (a reader independent of mlsharp's writer). This is a plain
module used by the parity tests (``from tests.parity import compare_to_reference``), not a
test file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from plyfile import PlyData

FIXTURES_DIR = Path(__file__).resolve().parent / "data" / "parity"

VERTEX_PROPERTIES = (
    "x",
    "y",
    "z",
    "f_dc_0",
    "f_dc_1",
    "f_dc_2",
    "opacity",
    "scale_0",
    "scale_1",
    "scale_2",
    "rot_0",
    "rot_1",
    "rot_2",
    "rot_3",
)
STAT_PROPERTIES = VERTEX_PROPERTIES[:10]  # rot_* are not gated (quaternion sign is free)
COVARIANCE = "covariance(rot+scale)"
DEFAULT_STRIDE = 101

_FORMATS = {"<": "binary_little_endian", ">": "binary_big_endian"}


@dataclass(frozen=True)
class Check:
    """One row of a parity report: the largest error of a check and its tolerance."""

    name: str
    max_error: float
    tolerance: float
    passed: bool
    detail: str = ""

    @property
    def normalised_error(self) -> float:
        """``max_error / tolerance``; for exact checks (tolerance 0) 0 or infinity."""
        if math.isnan(self.max_error):
            return math.inf
        if self.tolerance > 0:
            return self.max_error / self.tolerance
        return 0.0 if self.max_error == 0 else math.inf


@dataclass
class ParityReport:
    """Result of :func:`compare_to_reference` for one image."""

    image_name: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def max_normalised_error(self) -> float:
        """Largest ``error / tolerance`` over all checks."""
        return max((c.normalised_error for c in self.checks), default=math.inf)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]

    def format(self) -> str:
        """Multi-line human-readable summary (verdict line first)."""
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"parity {verdict} {self.image_name}: max error/tol {self.max_normalised_error:.3g}, "
            f"{len(self.failures)}/{len(self.checks)} checks failed",
            f"  {'check':32s} {'max error':>10s} {'tol':>8s} {'err/tol':>8s}",
        ]
        for c in self.checks:
            lines.append(
                f"  {c.name:32s} {c.max_error:10.3g} {c.tolerance:8.2g} "
                f"{c.normalised_error:8.3g}  {'ok  ' if c.passed else 'FAIL'}"
                + (f"  {c.detail}" if c.detail else "")
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def ply_layout(ply: PlyData) -> list[list[Any]]:
    """``[[element, count, [[property, type], ...]], ...]`` as in reference.json ``layout``.

    Types are plyfile's canonical names (``float``, ``uint``, ``int``, ``uchar``, ...).
    """
    layout = []
    for el in ply.elements:
        props = [[p.name, " ".join(str(p).split()[1:-1])] for p in el.properties]
        layout.append([el.name, int(el.count), props])
    return layout


def ply_format(ply: PlyData) -> str:
    """The PLY ``format`` line value of a parsed file."""
    return "ascii" if ply.text else _FORMATS.get(ply.byte_order, "binary_little_endian")


def load_fixture(fixtures_dir: Path, image_name: str) -> tuple[str, dict, dict, dict]:
    """``(image_name, reference.json, per-image metadata, sample npz arrays)``.

    ``image_name`` may be the file name (``astronaut.jpg``) or its stem.
    """
    reference = json.loads((Path(fixtures_dir) / "reference.json").read_text(encoding="utf-8"))
    images = reference["images"]
    if image_name not in images:
        matches = [n for n in images if Path(n).stem == image_name]
        if len(matches) != 1:
            raise KeyError(f"no reference for image {image_name!r}; have {sorted(images)}")
        image_name = matches[0]
    meta = images[image_name]
    sample_file = meta.get("sample_file", f"samples/{Path(image_name).stem}.npz")
    with np.load(Path(fixtures_dir) / sample_file, allow_pickle=False) as npz:
        sample = {k: npz[k] for k in npz.files}
    return image_name, reference, meta, sample


# ----------------------------------------------------------------------------------------------
# Error measures
# ----------------------------------------------------------------------------------------------
def quaternion_matrices(quats: np.ndarray) -> np.ndarray:
    """Rotation matrices ``[n, 3, 3]`` of ``(w, x, y, z)`` quaternions ``[n, 4]`` (normalised)."""
    q = np.asarray(quats, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def covariances(log_scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """``S = R(q) diag(exp(2 s)) R(q)^T`` per Gaussian, ``[n, 3, 3]`` float64."""
    rot = quaternion_matrices(quats)
    var = np.exp(2.0 * np.asarray(log_scales, dtype=np.float64))
    return np.einsum("nij,nj,nkj->nik", rot, var, rot)


def vertex_errors(got: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample error of each vertex group; rows are ``VERTEX_PROPERTIES`` ``[n, 14]``.

    NaN errors (e.g. NaN output) are reported as infinity.
    """
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    errs: dict[str, np.ndarray] = {
        "position": np.linalg.norm(got[:, :3] - ref[:, :3], axis=1)
        / np.linalg.norm(ref[:, :3], axis=1)
    }
    for i, name in enumerate(VERTEX_PROPERTIES[3:10], start=3):
        errs[name] = np.abs(got[:, i] - ref[:, i])
    cov_got = covariances(got[:, 7:10], got[:, 10:14])
    cov_ref = covariances(ref[:, 7:10], ref[:, 10:14])
    errs[COVARIANCE] = np.linalg.norm(cov_got - cov_ref, axis=(1, 2)) / np.linalg.norm(
        cov_ref, axis=(1, 2)
    )
    return {k: np.where(np.isnan(v), np.inf, v) for k, v in errs.items()}


def group_passes(
    errors: np.ndarray, tol: float, max_outlier_fraction: float, outlier_factor: float
) -> bool:
    """Pass rule: at most ``max_outlier_fraction`` above ``tol``, none above ``factor * tol``."""
    e = np.where(np.isnan(errors), np.inf, np.asarray(errors, dtype=np.float64))
    if e.size == 0:
        return True
    return bool(np.mean(e > tol) <= max_outlier_fraction and e.max() <= outlier_factor * tol)


def summary_stats(column: np.ndarray, quantiles: Sequence[float]) -> dict[str, float]:
    """mean, std (population), min, max and ``q<q>`` (linear interpolation) in float64."""
    col = np.asarray(column, dtype=np.float64)
    stats = {
        "mean": float(col.mean()),
        "std": float(col.std()),
        "min": float(col.min()),
        "max": float(col.max()),
    }
    for q, v in zip(quantiles, np.quantile(col, list(quantiles)), strict=True):
        stats[f"q{q:g}"] = float(v)
    return stats


def _relative_errors(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    diff = np.abs(got - ref)
    denom = np.abs(ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(denom > 0, diff / np.where(denom > 0, denom, 1.0), np.inf)
    return np.where(diff == 0, 0.0, np.where(np.isnan(rel), np.inf, rel))


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def check_layout(layout: list, fmt: str, meta: Mapping[str, Any]) -> Check:
    """Header check: format and the exact element/property layout."""
    ref_layout = [[n, int(c), [list(p) for p in props]] for n, c, props in meta["layout"]]
    problems = []
    if fmt != meta["format"]:
        problems.append(f"format {fmt} != {meta['format']}")
    if layout != ref_layout:
        got_n, ref_n = [e[0] for e in layout], [e[0] for e in ref_layout]
        if got_n != ref_n:
            problems.append(f"elements {got_n} != {ref_n}")
        else:
            for got_el, ref_el in zip(layout, ref_layout, strict=True):
                if got_el != ref_el:
                    problems.append(f"{got_el[0]}: {got_el[1:]} != {ref_el[1:]}")
                    break
    return Check(
        "header layout", 0.0 if not problems else math.inf, 0.0, not problems, "; ".join(problems)
    )


def check_elements(ply: PlyData, meta: Mapping[str, Any], tolerances: Mapping) -> list[Check]:
    """Non-vertex elements, exactly or within ``tolerances['elements']`` (relative)."""
    checks = []
    present = {el.name: el for el in ply.elements}
    for name, ref_values in meta["elements"].items():
        tol = float(tolerances.get("elements", {}).get(name, 0.0))
        el = present.get(name)
        if el is None or not el.properties:
            checks.append(Check(f"element {name}", math.inf, tol, False, "missing"))
            continue
        got = np.asarray(el.data[el.properties[0].name], dtype=np.float64)
        ref = np.asarray(ref_values, dtype=np.float64)
        if got.shape != ref.shape:
            checks.append(
                Check(f"element {name}", math.inf, tol, False, f"{got.tolist()} != {ref.tolist()}")
            )
            continue
        err = float(_relative_errors(got, ref).max()) if ref.size else 0.0
        ok = err <= tol
        checks.append(
            Check(
                f"element {name}", err, tol, ok, "" if ok else f"{got.tolist()} != {ref.tolist()}"
            )
        )
    return checks


def check_vertex_sample(
    vertex: np.ndarray, sample: Mapping[str, np.ndarray], tolerances: Mapping
) -> list[Check]:
    """Index-wise comparison of the reference subsample, one check per vertex group."""
    vt = tolerances["vertex"]
    names = [str(n) for n in sample.get("names", VERTEX_PROPERTIES)]
    index = np.asarray(sample["index"], dtype=np.int64)
    missing = [n for n in VERTEX_PROPERTIES if n not in (vertex.dtype.names or ())]
    problem = ""
    if missing:
        problem = f"vertex properties missing: {missing}"
    elif index.size and index.max() >= len(vertex):
        problem = f"only {len(vertex)} vertices, sample index goes to {index.max()}"
    elif names != list(VERTEX_PROPERTIES):
        problem = f"sample columns {names} are not {list(VERTEX_PROPERTIES)}"
    if problem:
        return [Check(f"vertex {g}", math.inf, float(t), False, problem) for g, t in vt.items()]
    rows = vertex[index]
    got = np.stack([rows[n].astype(np.float64) for n in VERTEX_PROPERTIES], axis=1)
    errs = vertex_errors(got, sample["values"])
    frac_max, factor = tolerances["max_outlier_fraction"], tolerances["outlier_factor"]
    checks = []
    for group, tol in vt.items():
        e = errs[group]
        tol = float(tol)
        emax = float(e.max()) if e.size else 0.0
        over = float(np.mean(e > tol)) if e.size else 0.0
        p99 = float(np.quantile(e, 0.99)) if e.size else 0.0
        detail = "exact"
        if emax > 0:
            worst = int(index[np.argmax(e)])
            detail = f"p99 {p99:.3g}, {over * 100:.3f}% > tol, worst vertex {worst}"
        checks.append(
            Check(f"vertex {group}", emax, tol, group_passes(e, tol, frac_max, factor), detail)
        )
    return checks


def check_stats(
    vertex: np.ndarray,
    ref_stats: Mapping[str, Mapping[str, float]],
    quantiles: Sequence[float],
    tol: float,
) -> list[Check]:
    """Summary statistics of every gated property over all vertices, ``|d| / std_ref``."""
    checks = []
    for prop in STAT_PROPERTIES:
        ref = ref_stats[prop]
        if prop not in (vertex.dtype.names or ()) or len(vertex) == 0:
            checks.append(Check(f"stats {prop}", math.inf, tol, False, "missing"))
            continue
        got = summary_stats(vertex[prop], quantiles)
        scale = max(float(ref["std"]), 1e-12)
        errs = {k: abs(got[k] - float(v)) / scale for k, v in ref.items()}
        errs = {k: (math.inf if math.isnan(d) else d) for k, d in errs.items()}
        worst = max(errs, key=errs.__getitem__)
        detail = f"worst {worst}: {got[worst]:.6g} vs {float(ref[worst]):.6g}"
        checks.append(Check(f"stats {prop}", errs[worst], tol, errs[worst] <= tol, detail))
    return checks


def compare_to_reference(
    ply_path: str | Path, image_name: str, fixtures_dir: str | Path = FIXTURES_DIR
) -> ParityReport:
    """Compare a produced ``.ply`` with the reference for ``image_name`` in ``fixtures_dir``.

    Args:
        ply_path: the file under test.
        image_name: key of ``reference.json['images']`` (file name or stem).
        fixtures_dir: folder with ``reference.json`` and ``samples/`` (default: the project's
            ``tests/data/parity``).
    """
    image_name, reference, meta, sample = load_fixture(Path(fixtures_dir), image_name)
    tolerances = reference["tolerances"]
    quantiles = reference.get("quantiles", [0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999])
    ply = PlyData.read(str(ply_path))
    report = ParityReport(image_name)
    report.checks.append(check_layout(ply_layout(ply), ply_format(ply), meta))
    report.checks.extend(check_elements(ply, meta, tolerances))
    names = [el.name for el in ply.elements]
    vertex = ply["vertex"].data if "vertex" in names else np.zeros(0, dtype=[("x", "f4")])
    report.checks.extend(check_vertex_sample(vertex, sample, tolerances))
    report.checks.extend(check_stats(vertex, meta["stats"], quantiles, float(tolerances["stats"])))
    return report


# ----------------------------------------------------------------------------------------------
# Building a reference from a .ply (for tests of the comparator and for new fixtures)
# ----------------------------------------------------------------------------------------------
def make_reference_fixture(
    ply_path: str | Path,
    out_dir: str | Path,
    image_name: str,
    *,
    stride: int = DEFAULT_STRIDE,
    tolerances: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``reference.json`` + ``samples/<stem>.npz`` describing ``ply_path`` as a reference.

    The layout matches the project's fixtures, so :func:`compare_to_reference` with
    ``fixtures_dir=out_dir`` compares against it. An existing ``reference.json`` in ``out_dir``
    keeps its other images. ``tolerances`` default to those of the project's fixtures.

    Returns:
        The path of ``reference.json``.
    """
    out_dir = Path(out_dir)
    ref_path = out_dir / "reference.json"
    if ref_path.is_file():
        reference = json.loads(ref_path.read_text(encoding="utf-8"))
    else:
        base = json.loads((FIXTURES_DIR / "reference.json").read_text(encoding="utf-8"))
        reference = {
            "sample_stride": stride,
            "quantiles": base["quantiles"],
            "tolerances": base["tolerances"],
            "images": {},
        }
    if tolerances is not None:
        reference["tolerances"] = dict(tolerances)
    ply = PlyData.read(str(ply_path))
    vertex = ply["vertex"].data
    index = np.arange(0, len(vertex), stride, dtype=np.int64)
    rows = vertex[index]
    values = np.stack([rows[n].astype(np.float32) for n in VERTEX_PROPERTIES], axis=1)
    sample_file = f"samples/{Path(image_name).stem}.npz"
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / sample_file, index=index, values=values, names=np.array(VERTEX_PROPERTIES))
    elements = {}
    for el in ply.elements:
        if el.name != "vertex":
            col = el.data[el.properties[0].name]
            elements[el.name] = [int(v) if col.dtype.kind in "iub" else float(v) for v in col]
    reference["images"][image_name] = {
        "format": ply_format(ply),
        "layout": ply_layout(ply),
        "vertex_count": len(vertex),
        "elements": elements,
        "stats": {p: summary_stats(vertex[p], reference["quantiles"]) for p in VERTEX_PROPERTIES},
        "sample_file": sample_file,
        "sample_rows": len(index),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    ref_path.write_text(json.dumps(reference, indent=1), encoding="utf-8")
    return ref_path
