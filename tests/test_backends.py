"""The openvino and onnxruntime runtimes against the torch reference (tiny preset).

The converted models are built once per session into one cache (``backend_cache``):
the fp32 ONNX export is shared by both runtimes, so the slow step (tracing the network)
runs once. Without the extras these tests skip with the pip command to run (in CI the
``dev`` extra installs both, so nothing skips there).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlsharp.backends.select import check_backend_options
from mlsharp.engine import Engine
from mlsharp.errors import ConfigError
from mlsharp.imaging import load_image
from mlsharp.runtime.accuracy import compare_gaussians, threshold_failures
from mlsharp.runtime.options import RuntimeOptions
from tests.conftest import REPO
from tests.test_precision import FP32_ROUNDING, assert_close, structured_photo

BACKENDS = ("openvino", "onnxruntime")
NEEDS = {"openvino": ("openvino", "openvino"), "onnxruntime": ("onnxruntime", "onnx")}


def needs(backend: str) -> pytest.MarkDecorator:
    package, extra = NEEDS[backend]
    missing = (
        importlib.util.find_spec(package) is None or importlib.util.find_spec("onnxscript") is None
    )
    if missing and os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must install the {extra} extra (it is in dev)")
    return pytest.mark.skipif(missing, reason=f'needs pip install "mlsharp[{extra}]"')


backend_params = [pytest.param(b, marks=needs(b)) for b in BACKENDS]


@pytest.fixture(scope="session")
def backend_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLSHARP_CACHE for every test here (converted models are built once)."""
    return tmp_path_factory.mktemp("backend-cache")


@pytest.fixture()
def cached(backend_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLSHARP_CACHE", str(backend_cache))
    return backend_cache


@pytest.fixture()
def traced(cached: Path, tiny_checkpoint: Path) -> Path:
    """The session cache with the fp32 ONNX export of the tiny preset in it (traced once
    per session; every other model here is converted from it)."""
    from mlsharp.backends.cache import ExportSpec, cached_export

    cached_export(tiny_checkpoint, ExportSpec("onnx", "tiny", 512, "fp32"))
    return cached


@pytest.fixture(scope="module")
def photos():
    return [
        load_image(structured_photo(160, 120, seed=1), focal_mm=24, name="a.png"),
        load_image(structured_photo(90, 150, seed=2), focal_mm=50, name="b.png"),
    ]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, photos):
    engine = Engine.load(tiny_checkpoint, preset="tiny", device="cpu", download=False)
    return [engine.predict(photo) for photo in photos]


def load(checkpoint: Path, backend: str, **options) -> Engine:
    return Engine.load(
        checkpoint,
        preset="tiny",
        device="cpu",
        download=False,
        progress=False,
        options=RuntimeOptions(backend=backend, **options),
    )


@pytest.mark.parametrize("backend", backend_params)
def test_fp32_matches_the_torch_reference(backend, cached, tiny_checkpoint, photos, reference):
    engine = load(tiny_checkpoint, backend)
    assert engine.runtime.name == backend and engine.options.backend == backend
    results = engine.predict_many(photos, batch_size=2)  # a batch runs photo by photo
    for result, ref, photo in zip(results, reference, photos, strict=True):
        assert result.metadata["source"] == photo.name
        assert result.image_size == ref.image_size and len(result) == len(ref)
        assert_close(result, ref, FP32_ROUNDING)
    info = engine.runtime.info()
    assert info.backend == backend and info.precision == "fp32" and info.version
    assert info.memory_bytes and info.memory_bytes > 0


@pytest.mark.parametrize("backend", backend_params)
def test_int8_weights_stay_within_the_accuracy_guard(
    backend, cached, tiny_checkpoint, photos, reference
):
    engine = load(tiny_checkpoint, backend, int8_weights=True)
    errors = compare_gaussians(reference[0], engine.predict(photos[0]))
    assert threshold_failures(errors) == []
    # Really compressed: not the fp32 result bit for bit.
    assert errors["positions"].mean > 0


@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=needs("openvino"))])
def test_openvino_bf16_passes_the_accuracy_guard(
    backend, cached, tiny_checkpoint, photos, reference
):
    from mlsharp.backends.openvino_runtime import import_openvino

    core = import_openvino().Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(ConfigError, match="no bf16 support"):
            load(tiny_checkpoint, backend, precision="bf16")
        return
    engine = load(tiny_checkpoint, backend, precision="bf16")
    errors = compare_gaussians(reference[0], engine.predict(photos[0]))
    assert threshold_failures(errors) == []
    # Compiled from half-precision files: OpenVINO keeps the file's constants beside its
    # own bf16 copy of the weights, so fp32 files cost a second, twice as large copy.
    from mlsharp.backends.export import Manifest

    model_file = engine.runtime.model_file
    assert Manifest.read(model_file.parent).spec.weights == "fp16"
    assert 'element_type="f16"' in model_file.read_text()


@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=needs("openvino"))])
def test_openvino_precisions_never_share_a_compiled_blob(
    backend, cached, tiny_checkpoint, photos, reference, tmp_path, monkeypatch
):
    """OpenVINO's blob cache keys a model read from a file by its path, not by the
    inference precision: an fp32 process that met a bf16 process's blob ran in bf16 (and
    a bf16 one that met an fp32 blob gave outputs far outside the guard at full scale)."""
    from mlsharp.backends.openvino_runtime import import_openvino

    if "BF16" not in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU offers OpenVINO no bf16 to mix with fp32")
    load(tiny_checkpoint, backend)  # the IR, in the session's cache

    def fresh_cache(name: str) -> None:
        """A cache with the converted models but without any compiled blob."""
        root = tmp_path / name
        shutil.copytree(
            cached / "compiled", root / "compiled", ignore=shutil.ignore_patterns("*-blobs")
        )
        for extra in cached.glob("*.json"):
            shutil.copy(extra, root / extra.name)
        monkeypatch.setenv("MLSHARP_CACHE", str(root))

    fresh_cache("bf16-alone")
    bf16_alone = load(tiny_checkpoint, backend, precision="bf16").predict(photos[0])
    assert compare_gaussians(reference[0], bf16_alone)["positions"].mean > 0  # really bf16

    fresh_cache("both")
    fp32 = load(tiny_checkpoint, backend).predict(photos[0])
    assert_close(fp32, reference[0], FP32_ROUNDING)
    bf16 = load(tiny_checkpoint, backend, precision="bf16").predict(photos[0])  # fp32's blob?
    errors = compare_gaussians(bf16_alone, bf16)
    # The same compiled graph gives the same numbers (rotations pass through an
    # eigen-decomposition whose last bits vary from run to run).
    assert errors.pop("rotations").max < 1e-3
    assert all(error.max == 0 for error in errors.values()), errors
    fp32_again = load(tiny_checkpoint, backend).predict(photos[0])  # bf16's blob?
    assert_close(fp32_again, reference[0], FP32_ROUNDING)


@pytest.mark.parametrize("backend", backend_params)
def test_a_second_process_starts_from_the_cache(backend, cached, tiny_checkpoint, tmp_path):
    load(tiny_checkpoint, backend)  # built (or already there) in this session's cache
    folders = sorted(p.name for p in (cached / "compiled").iterdir() if not p.name.startswith("."))
    photo = tmp_path / "p.png"
    photo.write_bytes(structured_photo(64, 48))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
    env["MLSHARP_CACHE"] = str(cached)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "mlsharp", "predict", str(photo), "-o", str(tmp_path / "out")),
            *("--checkpoint", str(tiny_checkpoint), "--preset", "tiny", "--device", "cpu"),
            *("--backend", backend),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "converting the network" not in result.stderr  # nothing built again
    assert (tmp_path / "out" / "p.ply").is_file()
    after = sorted(p.name for p in (cached / "compiled").iterdir() if not p.name.startswith("."))
    assert after == folders


@pytest.mark.parametrize("backend", backend_params)
def test_torch_only_options_are_config_errors(backend, tiny_checkpoint):
    for options in ({"compile": True}, {"channels_last": True}, {"precision": "tf32"}):
        with pytest.raises(ConfigError):
            load(tiny_checkpoint, backend, **options)
    with pytest.raises(ConfigError, match="--device must be cpu"):
        check_backend_options(RuntimeOptions(backend=backend), torch.device("cuda"))


def test_onnxruntime_has_no_reduced_precision(tiny_checkpoint):
    with pytest.raises(ConfigError, match="not offered by the onnxruntime backend"):
        load(tiny_checkpoint, "onnxruntime", precision="bf16")


def test_int8_weights_with_torch_is_a_config_error(tiny_checkpoint):
    with pytest.raises(ConfigError, match="int8 weights need"):
        load(tiny_checkpoint, "torch", int8_weights=True)


def test_auto_without_a_measurement_is_torch(tiny_checkpoint, cached):
    engine = load(tiny_checkpoint, "auto")
    assert engine.runtime.name == "torch" and engine.options.backend == "torch"


def test_a_missing_extra_is_one_line_naming_pip(run_cli, tiny_checkpoint, tmp_path):
    # A Python that cannot import openvino: a sitecustomize hides it.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nsys.modules['openvino'] = None\nsys.modules['onnxruntime'] = None\n"
    )
    photo = tmp_path / "p.png"
    photo.write_bytes(structured_photo(64, 48))
    for backend, extra in (("openvino", "openvino"), ("onnxruntime", "onnx")):
        result = run_cli(
            "predict",
            str(photo),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(tiny_checkpoint),
            "--preset",
            "tiny",
            "--backend",
            backend,
            env={"PYTHONPATH": f"{hide}{os.pathsep}{REPO / 'src'}"},
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f'pip install "mlsharp[{extra}]"' in lines[0], lines


@pytest.mark.parametrize(
    "runtime",
    [
        pytest.param("openvino", marks=needs("openvino")),
        pytest.param("onnx", marks=needs("onnxruntime")),
    ],
)
def test_export_writes_the_model_a_manifest_and_the_error_per_output(
    runtime, run_cli, traced, tiny_checkpoint, tmp_path
):
    out = tmp_path / "export"
    result = run_cli(
        "export",
        "-o",
        str(out),
        "--runtime",
        runtime,
        "--preset",
        "tiny",
        "--checkpoint",
        str(tiny_checkpoint),
        "--offline",
        env={"MLSHARP_CACHE": str(traced)},
    )
    assert result.returncode == 0, result.stderr
    # The network traced for the cache is reused, not traced again.
    assert "exporting the tiny network" not in result.stderr
    assert str(traced / "compiled") in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preset"] == "tiny" and manifest["resolution"] == 512
    assert manifest["runtime_format"] == runtime and manifest["opset"] >= 18
    assert len(manifest["checkpoint_sha256"]) == 64
    assert [i["name"] for i in manifest["inputs"]] == ["image", "disparity_factor"]
    assert [o["name"] for o in manifest["outputs"]][-1] == "depth"
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir())
    # One line per output with its error, all at float32 rounding for fp32.
    rows = [line.split() for line in result.stdout.splitlines()[-6:]]
    assert [row[0] for row in rows] == [o["name"] for o in manifest["outputs"]]
    assert all(float(row[1]) < 1e-4 for row in rows), result.stdout


@pytest.mark.parametrize("backend", backend_params)
def test_autotune_measures_the_backend_against_fp32(backend, cached, tiny_checkpoint):
    from mlsharp.runtime.autotune import autotune

    result = autotune(
        tiny_checkpoint,
        preset="tiny",
        device="cpu",
        runs=1,
        warmup=0,
        download=False,
        candidates=[RuntimeOptions(backend=backend)],
        force=True,  # the other parameter's result is cached under the same key
    )
    measured = result.measurements[1]
    assert measured.options.backend == backend and measured.error is None
    assert measured.qualifies and measured.options.label().startswith(backend)
    assert backend in result.key.runtimes


def test_auto_picks_the_backend_autotune_measured_fastest(cached, tiny_checkpoint):
    """A cached autotune result (written as autotune writes it) decides ``auto`` on a CPU."""
    from datetime import datetime, timezone

    from mlsharp.backends.select import choose_backend
    from mlsharp.runtime.autotune import AutotuneResult, Measurement, save_result, tune_key
    from mlsharp.runtime.devices import probe_system

    cpu = torch.device("cpu")
    key = tune_key(
        tiny_checkpoint,
        preset="tiny",
        device=cpu,
        resolution=None,
        probe=probe_system(query_driver=False),
    )

    def measured(seconds: float, **options) -> Measurement:
        return Measurement(
            options=RuntimeOptions(**options), reference=not options, times=[seconds]
        )

    def save(*measurements: Measurement) -> None:
        save_result(
            AutotuneResult(
                key=key,
                best=measurements[0].options,
                measurements=list(measurements),
                created_at=datetime.now(timezone.utc).isoformat(),
                runs=1,
                warmup=0,
                image="synthetic",
            )
        )

    auto = RuntimeOptions(backend="auto")
    save(measured(2.0), measured(1.0, backend="onnxruntime"), measured(3.0, backend="openvino"))
    choice = choose_backend(auto, cpu, checkpoint=tiny_checkpoint, preset="tiny")
    assert choice.backend == "onnxruntime" and "2.00x" in choice.reason
    # A failed accuracy guard or another precision does not count; nor does a GPU.
    failing = measured(0.5, backend="openvino")
    failing.failures = ["positions p99 0.2 > 0.05"]
    save(measured(2.0), failing, measured(0.4, backend="openvino", precision="bf16"))
    assert choose_backend(auto, cpu, checkpoint=tiny_checkpoint, preset="tiny").backend == "torch"
    bf16 = RuntimeOptions(backend="auto", precision="bf16")
    assert choose_backend(bf16, cpu, checkpoint=tiny_checkpoint, preset="tiny").backend == "torch"
    gpu = choose_backend(auto, torch.device("cuda"), checkpoint=tiny_checkpoint, preset="tiny")
    assert gpu.backend == "torch"


@pytest.mark.parametrize("backend", [pytest.param("onnxruntime", marks=needs("onnxruntime"))])
def test_provider_selection_against_the_real_onnxruntime(backend):
    import onnxruntime

    from mlsharp.backends.onnxruntime_runtime import provider_name, select_providers

    available = onnxruntime.get_available_providers()
    assert "CPUExecutionProvider" in available
    assert select_providers("cpu", available) == ["CPUExecutionProvider"]
    assert select_providers(None, available)[-1] == "CPUExecutionProvider"
    assert provider_name("dml") == "DmlExecutionProvider" == provider_name("DirectML")
    missing = [
        short for short in ("qnn", "dml", "cuda", "coreml") if provider_name(short) not in available
    ]
    if missing:  # on this build: asking only for it names the package that brings it
        with pytest.raises(ConfigError, match="not available in this onnxruntime build"):
            select_providers(missing[0], available)
        # ... and in a list with the CPU it falls back to the CPU, in order.
        assert select_providers(f"{missing[0]},cpu", available) == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="unknown ONNX Runtime provider"):
        select_providers("warp-drive", available)


@pytest.mark.parametrize("backend", [pytest.param("onnxruntime", marks=needs("onnxruntime"))])
def test_the_session_uses_the_providers_asked_for(backend, cached, tiny_checkpoint):
    engine = load(tiny_checkpoint, backend, backend_device="cpu")
    assert engine.runtime.providers == ["CPUExecutionProvider"]  # the session's own answer
    assert engine.runtime.info().device == "CPUExecutionProvider"


@pytest.mark.parametrize("backend", [pytest.param("onnxruntime", marks=needs("onnxruntime"))])
def test_the_exported_graph_uses_standard_operators_qnn_lists(backend, cached, tiny_checkpoint):
    from mlsharp.backends.opcheck import graph_operators, opset, unlisted

    engine = load(tiny_checkpoint, backend)
    model_file = engine.runtime.model_file
    operators = graph_operators(model_file)
    assert opset(model_file) >= 18
    assert all(":" not in op for op in operators)  # only the standard ai.onnx domain
    assert unlisted(operators, "QNN") == []


def test_runtime_allocation_failures_become_out_of_memory():
    """OpenVINO's ``std::bad_alloc`` and ONNX Runtime's "Failed to allocate memory" reach
    the engine's out-of-memory handling like torch's allocator errors."""
    from mlsharp.backends.base import allocation_failure
    from mlsharp.errors import OutOfMemory
    from mlsharp.runtime.memory import run_guarded

    def failing(message: str):
        def step():
            failure = allocation_failure(RuntimeError(message))
            raise failure if failure is not None else RuntimeError(message)

        return step

    for message in ("std::bad_alloc", "[ONNXRuntimeError] : 6 : Failed to allocate memory"):
        with pytest.raises(OutOfMemory, match="out of memory on cpu while testing"):
            run_guarded(failing(message), device=torch.device("cpu"), context="testing")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_guarded(failing("shape mismatch"), device=torch.device("cpu"), context="testing")
