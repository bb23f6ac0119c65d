"""Fast paths of the engine against the fp32 reference path, with explicit tolerances.

Every fast path (bf16/fp16 autocast, channels-last decoders, float32 post-processing,
torch.compile, and on CUDA tf32 and CUDA graphs) runs the tiny preset on the same photo as
the fp32 reference engine; each output property is compared with its own tolerance
(docs/runtime.md lists them and explains the metrics):

    positions   max relative error |p - p_ref| / |p_ref|
    scales      max |log(s / s_ref)| (relative error of the sorted axis lengths)
    rotations   max relative Frobenius error of the covariance R S^2 R^T, and max
                |q - q_ref| of the canonical quaternions where the three axes are distinct
                (elsewhere the axes inside a degenerate plane are arbitrary)
    colors      max absolute error (linear RGB)
    opacities   max absolute error

The tolerances are measured figures (random tiny weights) with a margin of about 5x; for
real weights on a given device ``mlsharp autotune`` checks the same properties.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from mlsharp.engine import Engine
from mlsharp.errors import ConfigError
from mlsharp.gaussians import Gaussians
from mlsharp.imaging import LoadedImage, load_image
from mlsharp.model import build_model
from mlsharp.model.layers import Fp32GroupNorm, Fp32LayerNorm
from mlsharp.runtime.options import RuntimeOptions
from mlsharp.runtime.precision import (
    check_precision,
    cuda_bf16_native,
    cuda_fp32_math,
    mps_bf16_supported,
    precision_context,
    tf32_state,
)
from tests.conftest import REPO

CUDA = torch.cuda.is_available()


def needs_cuda(test):
    """CUDA only: skipped without a GPU; ``pytest -m cuda`` selects these
    (``benchmarks/gpu_check.py`` runs them on the device machine)."""
    skip = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run on the device machine)")
    return pytest.mark.cuda(skip(test))


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted difference per property (see the module docstring)."""

    positions: float
    log_scales: float
    covariance: float
    quaternions: float
    colors: float
    opacities: float


#: float32 everywhere, only rounding differs (sums reassociated by other kernels or batch
#: shapes, amplified through the network). Measured: the float32 Jacobi decomposition
#: 5e-8 / 6e-7 / 1.5e-6 / 4e-7 on the first four; a batch of 3 on the CPU 2e-7 / 6e-5 /
#: 9e-5 / 7e-5 / 2e-6 / 1.4e-5.
FP32_ROUNDING = Tolerance(1e-5, 3e-4, 3e-4, 1e-3, 2e-5, 1e-4)
#: Measured on the tiny preset (CPU): positions 1.7e-5, log-scales 2.7e-2, covariance
#: 3.8e-2, quaternions 2.2e-2, colours 7.3e-4, opacities 6.9e-3 (bf16 keeps 8 mantissa bits).
BF16 = Tolerance(1e-4, 0.15, 0.2, 0.1, 4e-3, 4e-2)
#: Measured: positions 2.6e-6, log-scales 4.2e-3, covariance 4.7e-3, quaternions 2.3e-3,
#: colours 9.1e-5, opacities 1.1e-3 (fp16 keeps 11 mantissa bits).
FP16 = Tolerance(2e-5, 0.02, 0.025, 0.012, 5e-4, 6e-3)


def differences(got: Gaussians, ref: Gaussians) -> dict[str, float]:
    """The per-property figures of the module docstring."""
    p, p_ref = got.positions.astype(np.float64), ref.positions.astype(np.float64)
    s, s_ref = got.scales.astype(np.float64), ref.scales.astype(np.float64)

    def covariance(g: Gaussians) -> np.ndarray:
        w, x, y, z = g.rotations.astype(np.float64).T
        r = np.stack(
            [
                np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
            ],
            axis=-2,
        )
        return r @ (g.scales.astype(np.float64)[:, :, None] ** 2 * r.transpose(0, 2, 1))

    cov, cov_ref = covariance(got), covariance(ref)
    gap = np.minimum(
        (s_ref[:, 0] - s_ref[:, 1]) / s_ref[:, 0], (s_ref[:, 1] - s_ref[:, 2]) / s_ref[:, 1]
    )
    distinct = gap > 0.05
    return {
        "positions": float(
            (np.linalg.norm(p - p_ref, axis=1) / np.linalg.norm(p_ref, axis=1)).max()
        ),
        "log_scales": float(np.abs(np.log(s / s_ref)).max()),
        "covariance": float(
            (
                np.linalg.norm(cov - cov_ref, axis=(1, 2)) / np.linalg.norm(cov_ref, axis=(1, 2))
            ).max()
        ),
        "quaternions": float(np.abs(got.rotations - ref.rotations)[distinct].max(initial=0.0)),
        "colors": float(np.abs(got.colors - ref.colors).max()),
        "opacities": float(np.abs(got.opacities - ref.opacities).max()),
    }


def assert_close(got: Gaussians, ref: Gaussians, tolerance: Tolerance) -> dict[str, float]:
    """Assert every property within ``tolerance``; returns the measured figures."""
    assert len(got) == len(ref)
    figures = differences(got, ref)
    print({k: f"{v:.2e}" for k, v in figures.items()})
    failed = {k: v for k, v in figures.items() if not v <= getattr(tolerance, k)}
    assert not failed, f"beyond tolerance {tolerance}: {failed}"
    return figures


def structured_photo(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    """A deterministic photo with smooth structure plus noise (PNG bytes)."""
    yy, xx = np.mgrid[0:height, 0:width] / float(width)
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy), xx, 1 - yy], -1) * 255
    rgb += np.random.default_rng(seed).normal(0, 10, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> LoadedImage:
    return load_image(structured_photo(), focal_mm=30)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, photo) -> Gaussians:
    engine = Engine.load(tiny_checkpoint, preset="tiny", device="cpu", download=False)
    return engine.predict(photo)


def _engine(checkpoint, device: str = "cpu", **options) -> Engine:
    return Engine.load(
        checkpoint,
        preset="tiny",
        device=device,
        download=False,
        options=RuntimeOptions(**options),
    )


@pytest.mark.parametrize(
    ("options", "tolerance"),
    [
        ({"fast_postprocess": True}, FP32_ROUNDING),
        ({"channels_last": True}, FP32_ROUNDING),
        ({"precision": "bf16"}, BF16),
        ({"precision": "fp16"}, FP16),  # works on CPU in torch 2.13, but slowly
        ({"precision": "bf16", "channels_last": True, "fast_postprocess": True}, BF16),
    ],
    ids=lambda value: RuntimeOptions(**value).label() if isinstance(value, dict) else "",
)
def test_fast_path_matches_fp32_reference_on_cpu(
    tiny_checkpoint, photo, reference, options, tolerance
):
    engine = _engine(tiny_checkpoint, **options)
    assert engine.options == RuntimeOptions(**options)
    got = engine.predict(photo)
    figures = assert_close(got, reference, tolerance)
    if options.get("precision", "fp32") != "fp32":
        # Low precision must actually be in effect (not silently fp32).
        assert max(figures.values()) > 0


def test_channels_last_really_changes_the_decoder_layout(tiny_checkpoint):
    # The channels_last comparison above passes at zero error on the CPU, which it would
    # also do if the option did nothing: check the weights' memory format itself.
    def conv_weights(engine: Engine) -> list[torch.Tensor]:
        return [
            module.weight
            for part in engine.model.conv_decoders()
            for module in part.modules()
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
            and module.weight.shape[-1] > 1  # 1x1 kernels look the same in both formats
        ]

    plain = conv_weights(_engine(tiny_checkpoint))
    converted = conv_weights(_engine(tiny_checkpoint, channels_last=True))
    assert len(plain) == len(converted) > 20
    nhwc = torch.channels_last
    assert not any(w.is_contiguous(memory_format=nhwc) and not w.is_contiguous() for w in plain)
    assert all(w.is_contiguous(memory_format=nhwc) for w in converted)
    assert sum(not w.is_contiguous() for w in converted) > 20  # really re-laid out
    # The ViT encoders stay as they are (only the convolutional parts change).
    vit = _engine(tiny_checkpoint, channels_last=True).model.monodepth_model
    patch = vit.monodepth_predictor.encoder.patch_encoder.patch_embed.proj.weight
    assert patch.is_contiguous()


def test_fp32_default_is_deterministic_and_reference(tiny_checkpoint, photo, reference):
    engine = _engine(tiny_checkpoint)
    assert engine.options == RuntimeOptions()
    got = engine.predict(photo)
    for name in ("positions", "scales", "rotations", "colors", "opacities"):
        np.testing.assert_array_equal(getattr(got, name), getattr(reference, name))


def test_quaternions_are_sign_canonical(reference):
    q = reference.rotations
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    assert (q[:, 0] >= 0).all()
    zero_w = q[:, 0] == 0
    assert (q[zero_w, 1] >= 0).all()


def test_low_precision_keeps_norms_heads_and_composition_in_fp32(tiny_checkpoint):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    seen: dict[str, list[torch.dtype]] = {"norm": [], "head_in": [], "head_out": []}

    def on_norm(module, inputs, output):
        seen["norm"].append(output.dtype)

    def on_head(module, inputs, output):
        seen["head_in"] += [f.dtype for f in inputs[0]]
        seen["head_out"].append(output.dtype)

    for module in model.modules():
        if isinstance(module, (Fp32LayerNorm, Fp32GroupNorm)):
            module.register_forward_hook(on_norm)
    model.prediction_head.register_forward_hook(on_head)
    convolutions: list[torch.dtype] = []
    model.feature_model.image_encoder.register_forward_hook(
        lambda m, i, o: convolutions.append(o.dtype)
    )
    image = torch.rand(1, 3, 512, 512)
    with torch.inference_mode(), precision_context("bf16", torch.device("cpu")):
        out = model(image, torch.tensor([1.0]))
    assert convolutions == [torch.bfloat16], "autocast is active for the convolutions"
    assert seen["norm"] and set(seen["norm"]) == {torch.float32}
    assert set(seen["head_in"]) == {torch.float32} and seen["head_out"] == [torch.float32]
    assert all(t.dtype == torch.float32 for t in out)


def test_fp32_norms_match_stock_modules_outside_autocast():
    x = torch.randn(2, 8, 5, 5)
    stock, ours = torch.nn.GroupNorm(4, 8), Fp32GroupNorm(4, 8)
    ours.load_state_dict(stock.state_dict())
    assert torch.equal(stock(x), ours(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ours(x.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, stock(x.bfloat16().float()), rtol=1e-5, atol=1e-5)


def test_all_attention_goes_through_sdpa():
    from torch.overrides import TorchFunctionMode

    class Calls(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    with torch.inference_mode(), Calls() as calls:
        model(torch.rand(1, 3, 512, 512), torch.tensor([1.0]))
    blocks = len(model.monodepth_model.monodepth_predictor.encoder.patch_encoder.blocks)
    # Patch encoder + image encoder, one attention per block; never a hand-written softmax.
    assert calls.names.count("scaled_dot_product_attention") == 2 * blocks
    assert "softmax" not in calls.names


def test_tf32_flags_are_scoped_and_restored():
    before = tf32_state()
    with cuda_fp32_math(True):
        assert tf32_state() == ("tf32", "tf32")
    assert tf32_state() == before
    with pytest.raises(RuntimeError, match="boom"), cuda_fp32_math(False):
        assert tf32_state() == ("ieee", "ieee")
        raise RuntimeError("boom")
    assert tf32_state() == before


TF32_AFTER_NEW_API = """
import torch
from mlsharp.runtime.precision import cuda_fp32_math, tf32_state
# Another library in the process switches TF32 on with torch's new per-backend API; from
# then on torch's legacy getters raise ("mix of the legacy and new APIs").
torch.backends.cuda.matmul.fp32_precision = "tf32"
with cuda_fp32_math(False):
    inside = tf32_state()
print(inside, tf32_state())
"""


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
def test_tf32_scope_works_after_the_new_fp32_precision_api_was_used():
    # A fresh process: the switches are process-wide and the state is sticky.
    result = subprocess.run(
        [sys.executable, "-c", TF32_AFTER_NEW_API],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["('ieee',", "'ieee')", "('tf32',", "'tf32')"]


def test_bf16_only_where_the_gpu_computes_it_natively():
    assert not cuda_bf16_native((7, 5), None)  # Turing (T4): emulated, slower than fp32
    assert not cuda_bf16_native((7, 0), None)  # Volta (V100)
    assert cuda_bf16_native((8, 0), None) and cuda_bf16_native((9, 0), None)
    assert cuda_bf16_native((9, 4), "6.4")  # ROCm (MI300): torch counts AMD GPUs as bf16


def test_mps_bf16_needs_macos_14():
    assert not mps_bf16_supported("13.6.1")
    assert mps_bf16_supported("14.0") and mps_bf16_supported("15.3.2")
    assert not mps_bf16_supported("")  # unknown: not claimed


def test_cpu_precision_context_leaves_global_flags_alone():
    before = tf32_state()
    with precision_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert tf32_state() == before
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_unsupported_modes_on_cpu_are_config_errors(tiny_checkpoint, tmp_path):
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="tf32 needs an NVIDIA GPU"):
        check_precision("tf32", cpu)
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        check_precision("fp8", cpu)
    # Checked before the weights are looked for: a missing file is not the error.
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        Engine.load(
            tmp_path / "missing.pt",
            preset="tiny",
            device="cpu",
            download=False,
            options=RuntimeOptions(cuda_graphs=True),
        )


def test_cli_rejects_tf32_on_cpu_in_one_line(run_cli, tiny_checkpoint, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(structured_photo(64, 48))
    result = run_cli(
        "predict", str(photo), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint),
        "--preset", "tiny", "--device", "cpu", "--precision", "tf32", "-q",
    )  # fmt: skip
    if CUDA:
        pytest.skip("this machine has CUDA")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("mlsharp: error: precision tf32")


def test_cli_predict_in_bf16_writes_a_ply(run_cli, tiny_checkpoint, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(structured_photo(64, 48))
    result = run_cli(
        "predict", str(photo), "-o", str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoint),
        "--preset", "tiny", "--device", "cpu", "--precision", "bf16", "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "photo.ply").stat().st_size > 0


@pytest.mark.slow
def test_torch_compile_on_cpu_matches_reference(tiny_checkpoint, photo, reference):
    # Inductor compiles C++ kernels with the system compiler: a minute or more here.
    engine = _engine(tiny_checkpoint, compile=True)
    assert_close(engine.predict(photo), reference, FP32_ROUNDING)


# --- CUDA only: skipped on machines without a GPU, run on the device machine ---


@needs_cuda
@pytest.mark.parametrize(
    ("options", "tolerance"),
    [
        # TF32 keeps 10 mantissa bits, like fp16: held to fp16's bounds, so a path that
        # silently ran bf16 (7 bits) would fail.
        ({"precision": "tf32"}, FP16),
        ({"precision": "bf16"}, BF16),
        ({"precision": "fp16"}, FP16),
        ({"channels_last": True}, FP32_ROUNDING),
        ({"fast_postprocess": True}, FP32_ROUNDING),
        ({"cuda_graphs": True}, FP32_ROUNDING),
        ({"precision": "bf16", "cuda_graphs": True, "channels_last": True}, BF16),
    ],
    ids=lambda value: RuntimeOptions(**value).label() if isinstance(value, dict) else "",
)
def test_fast_path_matches_fp32_reference_on_cuda(tiny_checkpoint, photo, options, tolerance):
    reference_cuda = _engine(tiny_checkpoint, "cuda").predict(photo)
    engine = _engine(tiny_checkpoint, "cuda", **options)
    first = engine.predict(photo)
    second = engine.predict(photo)  # CUDA graphs: the second call replays the graph
    assert_close(first, reference_cuda, tolerance)
    assert_close(second, reference_cuda, tolerance)


@needs_cuda
def test_cuda_reference_matches_cpu_reference(tiny_checkpoint, photo, reference):
    # fp32 on CUDA switches cuDNN's default TF32 convolutions off for the forward.
    assert_close(_engine(tiny_checkpoint, "cuda").predict(photo), reference, FP32_ROUNDING)


@needs_cuda
@pytest.mark.parametrize("index", [0, 1], ids=["cuda:0", "cuda:1"])
def test_cuda_graphs_replay_each_photo_on_the_engines_gpu(tiny_checkpoint, index):
    # Two different photos, replayed alternately, from a worker thread whose current
    # device is cuda:0: a graph captured on another device's stream, or one that replays
    # the first photo's input, fails this.
    if index >= torch.cuda.device_count():
        pytest.skip("needs a second GPU")
    device = f"cuda:{index}"
    photos = [
        load_image(structured_photo(320, 240, seed=1), focal_mm=30),
        load_image(structured_photo(200, 260, seed=2), focal_mm=50),
    ]
    eager = _engine(tiny_checkpoint, device)
    graphs = _engine(tiny_checkpoint, device, cuda_graphs=True)
    expected = [eager.predict(p) for p in photos]
    replayed: list[Gaussians] = []
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            replayed.extend(graphs.predict(p) for p in photos + photos)
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(300)
    assert not failure, failure
    for got, want in zip(replayed, expected + expected, strict=True):
        assert_close(got, want, FP32_ROUNDING)
    assert not np.allclose(replayed[0].positions[:100], replayed[1].positions[:100])
    assert graphs.runtime._graphs is not None
    assert graphs.runtime._graphs.device == torch.device(device)
