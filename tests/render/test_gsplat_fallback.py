"""gsplat installed but unusable: ``auto`` falls back to the PyTorch rasterizer with one
warning; ``--backend gsplat`` says why in one line. gsplat's alpha clamp per version.

The real gsplat cannot run without CUDA, so a child process puts a fake ``gsplat``
package on ``sys.path`` that fails the way a broken CUDA build does (at import, or when
its kernels are first built/launched), and makes ``render_frames`` resolve ``auto`` to
gsplat as on a CUDA device with gsplat installed (the one fact this machine cannot supply).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mlsharp.render.gsplat_backend import (
    GSPLAT_LEGACY_MAX_ALPHA,
    gsplat_failure,
    max_alpha_for_version,
)
from tests.conftest import REPO

FAKE_GSPLAT = {
    # The extension fails to build on first use (no nvcc, toolkit/torch mismatch).
    "build": (
        "__version__ = '1.5.3'\n"
        "def rasterization(**kwargs):\n"
        "    raise RuntimeError('Error building extension gsplat_cuda: nvcc not found')\n"
    ),
    # The prebuilt extension does not load (CUDA runtime of another version).
    "import": "raise OSError('libcudart.so.11.0: cannot open shared object file')\n",
    # Out of memory is a real error, not a broken build: it must propagate.
    "oom": (
        "import torch\n"
        "def rasterization(**kwargs):\n"
        "    raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
    ),
}

CHILD = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    import mlsharp.render.frames as frames
    from mlsharp.errors import ConfigError
    from mlsharp.render import camera_at, make_trajectory
    from tests.render.test_render_output import marker_scene

    # "a CUDA device with gsplat installed": auto and gsplat resolve to gsplat
    frames.resolve_backend = lambda backend, device: backend if backend == "torch" else "gsplat"
    scene = marker_scene()
    cameras = [camera_at(scene, (64, 48)), *make_trajectory(scene, "orbit", 2, (64, 48))]
    report = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            images = list(frames.render_frames(scene, cameras, backend="auto", device="cpu"))
            torch_images = list(frames.render_frames(scene, cameras, backend="torch"))
            report["same_as_torch"] = all(
                np.array_equal(a, b) for a, b in zip(images, torch_images))
        except Exception as error:
            report["auto_error"] = f"{type(error).__name__}: {error}"
    report["warnings"] = [str(w.message) for w in caught]
    try:
        list(frames.render_frames(scene, cameras[:1], backend="gsplat", device="cpu"))
    except ConfigError as error:
        report["named"] = str(error)
    except Exception as error:
        report["named"] = f"{type(error).__name__}: {error}"
    print(json.dumps(report))
    """
)


def run_with_fake_gsplat(tmp_path, kind: str) -> dict:
    package = tmp_path / kind / "gsplat"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_GSPLAT[kind])
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={"PYTHONPATH": f"{package.parent}:{REPO}", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["build", "import"])
def test_auto_falls_back_to_torch_once_when_gsplat_cannot_run(tmp_path, kind):
    report = run_with_fake_gsplat(tmp_path, kind)
    assert report.get("same_as_torch") is True, report
    assert len(report["warnings"]) == 1  # three frames, one warning
    assert "gsplat is installed but cannot render here" in report["warnings"][0]
    assert ("nvcc not found" if kind == "build" else "libcudart") in report["warnings"][0]
    assert report["named"].startswith("gsplat is installed but cannot render here")
    assert "--backend torch" in report["named"]


def test_out_of_memory_in_gsplat_is_not_a_broken_build(tmp_path):
    report = run_with_fake_gsplat(tmp_path, "oom")
    assert report["auto_error"].startswith("OutOfMemoryError")
    assert report["named"].startswith("OutOfMemoryError")
    assert report["warnings"] == []


def test_gsplat_failure_classifies_errors():
    assert gsplat_failure(ImportError("undefined symbol: _ZN3c10")) is not None
    assert gsplat_failure(RuntimeError("CUDA error: no kernel image is available")) is not None
    assert gsplat_failure(torch.OutOfMemoryError("CUDA out of memory")) is None
    assert gsplat_failure(ValueError("bad camera")) is None
    assert len(gsplat_failure(RuntimeError("x" * 1000)) or "") == 200


def test_gsplat_alpha_clamp_per_version():
    # Released gsplat 1.4.0-1.5.3 clamp at 0.999 in their kernels; 1.6 made it a MAX_ALPHA
    # constant of 0.99 (3DGS's value, and ours).
    for version in ("1.4.0", "1.5.0", "1.5.3", "1.5.3+pt26cu124"):
        assert max_alpha_for_version(version) == GSPLAT_LEGACY_MAX_ALPHA == 0.999
    assert max_alpha_for_version("1.6.0") == 0.99
    with pytest.raises(ValueError):
        max_alpha_for_version("main")


def test_torch_rasterizer_can_use_gsplats_alpha_clamp():
    from mlsharp.render.binning import bin_splats
    from mlsharp.render.composite import composite
    from tests.render.reference import composite_bruteforce
    from tests.render.test_rasterizer import as_splats2d, random_splats2d

    rng = np.random.default_rng(5)
    s = random_splats2d(rng, 200, 40, 30)
    s["opacities"] = np.full_like(s["opacities"], 0.9995)  # opaque: the clamp decides
    bg = np.array([0.2, 0.4, 0.6])
    bins = bin_splats(as_splats2d(s), 40, 30, 8)
    images = {}
    for clamp in (0.99, 0.999):
        expected, _ = composite_bruteforce(
            s["means"], s["conics"], s["opacities"], s["colors"], s["depths"], 40, 30, bg,
            max_alpha=clamp,
        )  # fmt: skip
        image, _ = composite(bins, 40, 30, torch.tensor(bg, dtype=torch.float32), max_alpha=clamp)
        np.testing.assert_allclose(image.numpy(), expected, atol=2e-5)
        images[clamp] = image
    assert (images[0.99] - images[0.999]).abs().max() > 1e-3  # the clamp matters
