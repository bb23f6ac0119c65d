"""``mlsharp export``: the network as an ONNX file or an OpenVINO IR, with a manifest.

What is exported is the forward only, as :class:`~mlsharp.backends.base.ForwardRuntime`
runs it: ``image`` (1, 3, S, S) float32 in [0, 1] and ``disparity_factor`` (1,) float32
in, the composer's six tensors out (:class:`~mlsharp.model.composer.ComposedGaussians`:
``mean_vectors``, ``singular_values``, ``quaternions``, ``colors``, ``opacities``,
``depth``). Decoding, resizing, unprojection and the writers stay in mlsharp.

How it is built:

1. the checkpoint is memory-mapped into the network built on the ``meta`` device (no copy
   of the weights), and ``torch.onnx.export(dynamo=True)`` writes ``model.onnx`` with its
   weights as external data (``model.onnx.data``; the 2 GB protobuf limit does not apply),
   standard ONNX operators at opset :data:`OPSET`;
2. the torch network and the checkpoint are released before the next step, so two full
   copies of the weights never live together longer than the exporter needs;
3. ``openvino``: ``openvino.convert_model`` reads the ONNX file and ``save_model`` writes
   ``model.xml`` + ``model.bin`` (fp16 weights for ``fp16``); ``int8`` weights are
   compressed by NNCF (``compress_weights``, 8-bit asymmetric, per output channel);
   ``onnx`` with ``int8`` weights: ONNX Runtime's ``MatMulNBitsQuantizer`` (8 bits,
   blocks of 128) rewrites the MatMuls with constant weights;
4. ``manifest.json`` names the preset, resolution, checkpoint SHA-256, precision, weights,
   inputs and outputs, the tool versions and mlsharp's version.

The batch dimension is fixed at 1 (static shapes compile best); a runtime runs a batch
photo by photo.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlsharp.choices import EXPORT_RUNTIME_CHOICES
from mlsharp.errors import ConfigError

log = logging.getLogger("mlsharp.export")

#: ONNX opset of exported graphs (the issue asks for >= 18; OpenVINO and ONNX Runtime
#: 1.2x+ read 20; ``LayerNormalization`` and ``Gelu`` are standard ops from 17 and 20).
OPSET = 20
MANIFEST_FORMAT = "mlsharp-export-v1"
MANIFEST_NAME = "manifest.json"
INPUT_NAMES = ("image", "disparity_factor")
OUTPUT_NAMES = ("mean_vectors", "singular_values", "quaternions", "colors", "opacities", "depth")
#: Exported file formats: ``openvino`` (IR .xml + .bin) and ``onnx``.
FORMATS = EXPORT_RUNTIME_CHOICES
#: How the weights are stored: float32, float16, or 8-bit integers (weight-only).
WEIGHT_KINDS = ("fp32", "fp16", "int8")

Progress = Callable[[str], None]
#: Precisions that only OpenVINO computes in; their exports store fp16 weights.
OPENVINO_HALF_PRECISIONS = ("bf16", "fp16")


def stored_weights(runtime_format: str, precision: str, *, int8: bool = False) -> str:
    """How an export for ``runtime_format`` run in ``precision`` stores its weights.

    ``int8`` when asked. OpenVINO running in bf16 or fp16 gets ``fp16`` files: its CPU
    plugin converts the weights into its own bf16/fp16 layout and still keeps the model
    file's constants (mapped) beside that copy, so fp32 files made a second, twice as large
    copy (``sharp`` at 1536², OpenVINO alone: 5.9 GiB peak RSS with fp32 files, 4.7 GiB
    with fp16 ones).
    bf16 keeps fewer mantissa bits than fp16, so the detour through fp16 adds no
    measurable error (the accuracy guard checks it). ``fp32`` otherwise.
    """
    if int8:
        return "int8"
    if runtime_format == "openvino" and precision in OPENVINO_HALF_PRECISIONS:
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class ExportSpec:
    """What an exported model is: everything that changes its files.

    Attributes:
        format: ``openvino`` (IR) or ``onnx``.
        preset: network preset.
        resolution: internal resolution (the image side) baked into the graph.
        weights: ``fp32``, ``fp16`` (stored in half precision) or ``int8`` (weight-only).
    """

    format: str
    preset: str
    resolution: int
    weights: str = "fp32"

    def check(self) -> None:
        """Raise :class:`ConfigError` for a format or weight kind that does not exist."""
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}; choose {', '.join(FORMATS)}")
        if self.weights not in WEIGHT_KINDS:
            raise ConfigError(
                f"unknown weight kind {self.weights!r}; choose {', '.join(WEIGHT_KINDS)}"
            )
        if self.format == "onnx" and self.weights == "fp16":
            raise ConfigError(
                "fp16 weights are exported for OpenVINO only (--runtime openvino); ONNX files "
                "are exported in fp32, or with int8 weights (--weights int8)"
            )

    @property
    def model_file(self) -> str:
        """The file a runtime opens: ``model.xml`` or ``model.onnx``."""
        return "model.xml" if self.format == "openvino" else "model.onnx"


@dataclass
class Manifest:
    """``manifest.json`` beside an exported model (see the module docstring)."""

    spec: ExportSpec
    checkpoint_sha256: str
    precision: str
    files: list[str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    versions: dict[str, str]
    mlsharp_version: str
    opset: int = OPSET
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    seconds: float = 0.0
    format: str = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The JSON written beside the model."""
        data = asdict(self)
        data.update(data.pop("spec"))
        data["runtime_format"] = data.pop("format")
        data["format"] = MANIFEST_FORMAT
        return data

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Parse ``folder/manifest.json``; raises ``ValueError``/``KeyError``/``OSError``."""
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{folder / MANIFEST_NAME} is not an mlsharp export manifest")
        spec = ExportSpec(
            format=str(data["runtime_format"]),
            preset=str(data["preset"]),
            resolution=int(data["resolution"]),
            weights=str(data["weights"]),
        )
        return cls(
            spec=spec,
            checkpoint_sha256=str(data["checkpoint_sha256"]),
            precision=str(data["precision"]),
            files=[str(f) for f in data["files"]],
            inputs=list(data["inputs"]),
            outputs=list(data["outputs"]),
            versions=dict(data["versions"]),
            mlsharp_version=str(data["mlsharp_version"]),
            opset=int(data["opset"]),
            created_at=str(data["created_at"]),
            seconds=float(data.get("seconds", 0.0)),
        )


def missing_extra(package: str, extra: str) -> ConfigError:
    """The one-line error for an optional runtime that is not installed."""
    return ConfigError(
        f'this needs the {package} package, which is not installed: pip install "mlsharp[{extra}]"'
    )


def tool_versions(spec: ExportSpec) -> dict[str, str]:
    """Versions of the tools that write ``spec``'s files (part of the cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch", "onnx", "onnxscript"]
    if spec.format == "openvino":
        names.append("openvino")
        if spec.weights == "int8":
            names.append("nncf")
    elif spec.weights == "int8":
        names.append("onnxruntime")
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            extra = "openvino" if name in ("openvino", "nncf") else "onnx"
            raise missing_extra(name, extra) from None
    return versions


class _ExportedForward:
    """The network with plain tensor inputs and a tuple of tensors out (what exporters
    trace); built lazily so this module imports without torch."""

    @staticmethod
    def wrap(model: Any) -> Any:
        import torch

        class Forward(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> tuple:
                return tuple(self.model(image, disparity_factor))

        return Forward().eval()


def _load_network(checkpoint: Path, preset: str) -> Any:
    """The torch network with the checkpoint's weights, memory-mapped (no copy)."""
    from mlsharp import weights
    from mlsharp.model import build_model

    model = build_model(preset, device="meta")
    weights.load_into(
        model, weights.load_state_dict(checkpoint), what=str(checkpoint), preset=preset
    )
    return model.eval()


def export_onnx(checkpoint: Path, preset: str, resolution: int, dest: Path) -> None:
    """Write ``dest`` (``model.onnx``) and its external data from the checkpoint."""
    import warnings

    import torch

    model = _ExportedForward.wrap(_load_network(checkpoint, preset))
    image = torch.zeros(1, 3, resolution, resolution)
    factor = torch.ones(1)
    # "torchvision is not installed. Skipping torchvision::nms" and the like: the
    # network uses no torchvision operator, so these lines only alarm users.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    saved_level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The exporter warns about torchvision ops it cannot register (no torchvision
            # here; the network uses none) and about deprecated internals: not actionable.
            warnings.simplefilter("ignore")
            with torch.inference_mode(False), torch.no_grad():
                program = torch.onnx.export(
                    model,
                    (image, factor),
                    dynamo=True,
                    opset_version=OPSET,
                    input_names=list(INPUT_NAMES),
                    output_names=list(OUTPUT_NAMES),
                    external_data=True,
                    verbose=False,
                )
                assert program is not None
                program.save(str(dest), external_data=True)
    finally:
        registration.setLevel(saved_level)
    del program, model
    gc.collect()


def _ir_from_onnx(onnx_path: Path, dest: Path, *, weights: str) -> None:
    """Convert ``onnx_path`` to an OpenVINO IR at ``dest`` (``model.xml``)."""
    try:
        import openvino as ov
    except ImportError:
        raise missing_extra("openvino", "openvino") from None
    model = ov.convert_model(str(onnx_path))
    if weights == "int8":
        try:
            import nncf
        except ImportError:
            raise missing_extra("nncf", "openvino") from None
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(dest), compress_to_fp16=weights == "fp16")
    del model
    gc.collect()


def _quantize_onnx_int8(src: Path, dest: Path) -> None:
    """Rewrite the constant-weight MatMuls of ``src`` as 8-bit ``MatMulNBits``."""
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:
        raise missing_extra("onnxruntime", "onnx") from None
    quantizer = MatMulNBitsQuantizer(str(src), bits=8, block_size=128, is_symmetric=False)
    quantizer.process()
    onnx.save_model(
        quantizer.model.model,
        str(dest),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=dest.name + ".data",
    )


def _io_description(spec: ExportSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from mlsharp.model import preset as preset_config

    size = spec.resolution
    count = preset_config(spec.preset).num_gaussians_at(size)
    inputs = [
        {"name": "image", "shape": [1, 3, size, size], "dtype": "float32", "range": "[0, 1]"},
        {"name": "disparity_factor", "shape": [1], "dtype": "float32", "meaning": "f_px / width"},
    ]
    widths = {"mean_vectors": 3, "singular_values": 3, "quaternions": 4, "colors": 3}
    outputs = [
        {"name": name, "shape": [1, count, widths[name]], "dtype": "float32"}
        for name in OUTPUT_NAMES[:4]
    ]
    outputs.append({"name": "opacities", "shape": [1, count], "dtype": "float32"})
    outputs.append({"name": "depth", "shape": [1, size, size], "dtype": "float32"})
    return inputs, outputs


def build_export(
    checkpoint: Path,
    spec: ExportSpec,
    dest: Path,
    *,
    precision: str = "fp32",
    progress: Progress | None = None,
    float_onnx: Path | None = None,
) -> Manifest:
    """Export ``checkpoint`` as ``spec`` into the (new, empty) folder ``dest``.

    ``precision`` is recorded in the manifest as the precision the model is meant to run
    in (the files only change with ``spec.weights``). ``float_onnx``: an fp32 ONNX export
    of the same checkpoint, preset and resolution (with its manifest beside it) to convert
    from, or to copy when ``spec`` is that export, instead of tracing the network again
    (the cache keeps one). Raises :class:`ConfigError` when a needed package is missing,
    :class:`~mlsharp.errors.CheckpointError` for a bad checkpoint.
    """
    from mlsharp._version import __version__
    from mlsharp.weights import memoized_sha256

    spec.check()
    versions = tool_versions(spec)
    say = progress or (lambda message: None)
    started = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    intermediate = spec.format == "openvino" or spec.weights == "int8"
    if float_onnx is not None and not intermediate:  # that very export: its files
        say("copying the fp32 ONNX export")
        for name in Manifest.read(float_onnx.parent).files:
            if name != MANIFEST_NAME:
                shutil.copyfile(float_onnx.parent / name, dest / name)
    elif float_onnx is not None:
        onnx_path, intermediate = float_onnx, False
    else:
        if intermediate:
            onnx_path = dest / "float" / "model.onnx"
            onnx_path.parent.mkdir()
        say(f"exporting the {spec.preset} network at {spec.resolution}px to ONNX (opset {OPSET})")
        export_onnx(checkpoint, spec.preset, spec.resolution, onnx_path)
    if spec.format == "openvino":
        say(f"converting to an OpenVINO IR ({spec.weights} weights)")
        _ir_from_onnx(onnx_path, dest / "model.xml", weights=spec.weights)
    elif spec.weights == "int8":
        say("compressing the MatMul weights to 8 bits (MatMulNBits)")
        _quantize_onnx_int8(onnx_path, dest / "model.onnx")
    if intermediate:
        shutil.rmtree(onnx_path.parent)
    inputs, outputs = _io_description(spec)
    manifest = Manifest(
        spec=spec,
        checkpoint_sha256=memoized_sha256(checkpoint),
        precision=precision,
        files=sorted(p.name for p in dest.iterdir() if p.is_file()),
        inputs=inputs,
        outputs=outputs,
        versions=versions,
        mlsharp_version=__version__,
        seconds=round(time.perf_counter() - started, 1),
    )
    manifest.files.append(MANIFEST_NAME)
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=1), encoding="utf-8")
    return manifest
