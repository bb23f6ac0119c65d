"""The one interface every way of running the network forward implements.

A *runtime* is built (or loaded) once for a checkpoint, an internal resolution, a
precision and a device, and then turns a batch of images plus their disparity factors
into the composer's tensors, as ``SharpModel.forward`` does. Everything around the forward
(decode, resize, unprojection, batching, the out-of-memory fallback, stage timings,
cancellation) stays in :class:`~mlsharp.engine.Engine`, the same for every runtime.

This mirrors httpx's ``BaseTransport.handle_request``: one small method that a test or a
new runtime can swap, instead of branches through the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from mlsharp.model.composer import ComposedGaussians
    from mlsharp.model.config import SharpConfig
    from mlsharp.runtime.options import RuntimeOptions


@dataclass(frozen=True)
class RuntimeInfo:
    """What a runtime reports about itself (``mlsharp doctor``, logs, benchmarks).

    Attributes:
        backend: ``torch``, ``openvino`` or ``onnxruntime``.
        device: where the forward runs, in the runtime's own words (``cpu``, ``cuda:0``,
            ``CPU``, ``CPUExecutionProvider`` ...).
        precision: the precision the forward computes in.
        version: the runtime library's version.
        memory_bytes: memory in use by the process for this runtime where it can be
            measured (device memory on CUDA, resident memory elsewhere), else ``None``.
        detail: anything else worth showing (compiled-model cache file, providers ...).
    """

    backend: str
    device: str
    precision: str
    version: str
    memory_bytes: int | None = None
    detail: str = ""


@runtime_checkable
class ForwardRuntime(Protocol):
    """Runs the SHARP forward; implemented by the torch, OpenVINO and ONNX Runtime runtimes.

    Attributes:
        name: the backend name (``torch``, ``openvino``, ``onnxruntime``).
        cfg: the network's configuration (resolutions, Gaussians per image).
        device: the torch device :meth:`run` takes its inputs on and returns its outputs
            on (the CPU for runtimes outside torch).
        options: the runtime options it was built for (precision, resolution, ...).
        fixed_shapes: each new batch size costs a compilation or a graph capture (torch's
            ``compile`` and CUDA graphs), so the engine runs only
            :data:`~mlsharp.runtime.options.BATCH_BUCKETS` sizes.
    """

    name: str
    cfg: SharpConfig
    device: torch.device
    options: RuntimeOptions
    fixed_shapes: bool

    def run(self, images: torch.Tensor, disparity_factors: torch.Tensor) -> ComposedGaussians:
        """The network forward: (B, 3, S, S) images in [0, 1] and (B,) disparity factors
        (focal length in px / image width) -> the composer's tensors, float32, on
        :attr:`device`."""
        ...

    def suggested_batch_size(self) -> int:
        """Photos per forward when the caller does not say (1 unless memory is known)."""
        ...

    def reset(self) -> None:
        """Drop state a failed :meth:`run` may have left half-built (e.g. a graph capture)."""
        ...

    def info(self) -> RuntimeInfo:
        """Device, precision, version and memory, for reports."""
        ...


#: How the OpenVINO and ONNX Runtime allocators word a failed allocation.
_ALLOCATION_MARKERS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate")


def allocation_failure(error: BaseException) -> MemoryError | None:
    """A ``MemoryError`` for a runtime's failed allocation (so the engine's out-of-memory
    handling applies to every runtime alike), else ``None``."""
    text = str(error).strip()
    if any(marker in text.lower() for marker in _ALLOCATION_MARKERS):
        return MemoryError(text.splitlines()[0] if text else type(error).__name__)
    return None
