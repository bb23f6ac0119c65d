"""Parity with Apple's reference: the full network, synthetic weights, stored reference output.

For every photo listed in ``data/parity/reference.json`` this builds the deterministic
synthetic checkpoint (verified against the stored digest), runs ``mlsharp predict`` on the
photo exactly as a user would, and compares the .ply with what ml-sharp wrote for the same
photo and weights, within the tolerances recorded next to the reference data. Held-out
photos are added by dropping their image, sample file and reference.json entry in place.

Slow on CPU (the full ViT-L pair at 1536x1536: a few minutes per photo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlsharp.synthetic import cached_synthetic_checkpoint
from tests.conftest import PARITY
from tests.parity import compare_to_reference

IMAGES = sorted(json.loads((PARITY / "reference.json").read_text())["images"])


@pytest.fixture(scope="module")
def synthetic_checkpoint() -> Path:
    return cached_synthetic_checkpoint(
        PARITY / "sharp_checkpoint_manifest.json", PARITY / "weights_digest.json"
    )


def _backend(name: str):
    """``torch``, or a backend whose extra may be missing (skips then, except in CI)."""
    if name == "torch":
        return name
    import importlib.util

    missing = importlib.util.find_spec(name) is None
    if missing and os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must install the {name} backend (it is in the dev extra)")
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{name} not installed"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", [_backend("torch"), _backend("openvino")])
@pytest.mark.parametrize("image_name", IMAGES)
def test_predict_matches_reference(
    image_name: str, backend: str, synthetic_checkpoint: Path, tmp_path: Path
):
    """fp32 through torch, and through OpenVINO (the network exported to an IR on first
    use, into this test's own cache: about 2 minutes and ~12 GB more)."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env["MLSHARP_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlsharp",
            "predict",
            str(PARITY / "images" / image_name),
            "-o",
            str(out),
            "--checkpoint",
            str(synthetic_checkpoint),
            "--device",
            "cpu",
            "--backend",
            backend,
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr
    print(result.stderr)
    report = compare_to_reference(out / f"{Path(image_name).stem}.ply", image_name, PARITY)
    print(report.format())
    assert report.passed, report.format()
