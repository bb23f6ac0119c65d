"""How far an exported model's outputs are from torch fp32 on the same input.

``mlsharp export`` ends with :func:`compare_export`; tests and benchmarks use it too.
Each of the six outputs gets the largest and the mean absolute difference, divided by
the largest and the mean absolute value of the torch output (so 1e-6 reads "float32
rounding" whatever the output's scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlsharp.backends.base import ForwardRuntime
from mlsharp.backends.export import OUTPUT_NAMES, Manifest
from mlsharp.runtime.options import RuntimeOptions


@dataclass(frozen=True)
class OutputError:
    """The error of one output against torch fp32."""

    name: str
    max_relative: float
    mean_relative: float


def open_export(
    folder: Path, *, precision: str = "fp32", device: str | None = None
) -> ForwardRuntime:
    """A runtime over the export in ``folder`` (its manifest says which)."""
    from mlsharp.model import preset as preset_config

    manifest = Manifest.read(folder)
    spec = manifest.spec
    cfg = preset_config(spec.preset)
    if spec.format == "openvino":
        from mlsharp.backends.openvino_runtime import OpenVinoRuntime

        options = RuntimeOptions(
            precision=precision,  # type: ignore[arg-type]
            resolution=spec.resolution,
            backend="openvino",
        )
        return OpenVinoRuntime(folder / spec.model_file, cfg, options, device=device or "CPU")
    from mlsharp.backends.onnxruntime_runtime import OnnxRuntimeRuntime

    options = RuntimeOptions(resolution=spec.resolution, backend="onnxruntime")
    return OnnxRuntimeRuntime(folder / spec.model_file, cfg, options, providers=device)


def compare_export(
    checkpoint: Path, folder: Path, *, precision: str = "fp32", device: str | None = None
) -> list[OutputError]:
    """Run torch fp32 and the export in ``folder`` on the synthetic photo; the error of
    each output. The torch network is released before the export is loaded."""
    import gc

    from mlsharp.engine import Engine, network_inputs
    from mlsharp.runtime.autotune import synthetic_photo

    spec = Manifest.read(folder).spec
    photo = synthetic_photo()
    engine = Engine.load(
        checkpoint,
        preset=spec.preset,
        device="cpu",
        download=False,
        progress=False,
        options=RuntimeOptions(resolution=spec.resolution, backend="torch"),
    )
    images, factors = network_inputs([photo], spec.resolution, engine.device)
    reference = engine.runtime.run(images, factors)
    del engine
    gc.collect()
    exported = open_export(folder, precision=precision, device=device).run(images, factors)
    errors = []
    for name, ref, out in zip(OUTPUT_NAMES, reference, exported, strict=True):
        assert ref is not None and out is not None  # every output, depth included
        ref64, diff = ref.double(), (out.double() - ref.double()).abs()
        errors.append(
            OutputError(
                name=name,
                max_relative=float(diff.max() / ref64.abs().max().clamp(min=1e-30)),
                mean_relative=float(diff.mean() / ref64.abs().mean().clamp(min=1e-30)),
            )
        )
    return errors


def format_comparison(errors: list[OutputError]) -> str:
    """A small table: output, max |diff| / max |ref|, mean |diff| / mean |ref|."""
    lines = [f"{'output':<16} {'max rel. error':>15} {'mean rel. error':>16}"]
    lines += [f"{e.name:<16} {e.max_relative:>15.2e} {e.mean_relative:>16.2e}" for e in errors]
    return "\n".join(lines)
