"""``RuntimeOptions``: the knobs that change how (not what) the engine computes.

Every option except ``precision="fp32"`` with the rest at their defaults is a *fast path*
that is checked against the fp32 reference path (tests, and ``mlsharp autotune`` on the
user's device). No torch import here: the CLI and settings use these names and defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Numeric precision of the network forward (defined with every other choice list).
from mlsharp.choices import BACKEND_CHOICES, PRECISION_CHOICES, Backend, Precision

__all__ = ["PRECISION_CHOICES", "Precision", "RuntimeOptions"]

#: Batch sizes a fixed-shape forward (``compile``, ``cuda_graphs``) runs at. Each new input
#: shape costs a recompilation or a graph capture (and the graph's memory), so batches are
#: cut into these sizes (9 photos: 8 + 1) instead of running at every size from 1 to 16.
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)


def batch_bucket(photos: int) -> int:
    """The largest bucket of :data:`BATCH_BUCKETS` that is at most ``photos`` (at least 1);
    above the largest bucket, a multiple of it."""
    top = BATCH_BUCKETS[-1]
    if photos >= top:
        return top * (photos // top)
    return max((b for b in BATCH_BUCKETS if b <= photos), default=1)


@dataclass(frozen=True)
class RuntimeOptions:
    """How the engine runs the network; the defaults reproduce the reference exactly.

    Attributes:
        precision: see :data:`Precision`.
        channels_last: run the convolutional decoders in channels-last memory format.
        compile: wrap the network in ``torch.compile`` (first call is slow).
        cuda_graphs: capture the fixed-shape forward in a CUDA graph (CUDA only).
        resolution: internal resolution the network runs at (``None``: the preset's own,
            1536 for ``sharp``); must be one of the values the architecture accepts.
        fast_postprocess: decompose the covariances with the float32 Jacobi solver on the
            device instead of the float64 reference eigendecomposition.
        batch_size: images per forward in ``Engine.predict_many`` (``None``: estimated
            from free memory on CUDA, 1 elsewhere); lowered after an out-of-memory error,
            and cut into :data:`BATCH_BUCKETS` sizes with ``compile`` or ``cuda_graphs``.
        backend: what runs the forward: ``torch``, ``openvino``, ``onnxruntime``, or
            ``auto`` (resolved when the engine is built; see :mod:`mlsharp.backends`).
        backend_device: the OpenVINO device (``CPU``, ``GPU``, ``NPU``, ``AUTO``) or the
            ordered ONNX Runtime providers (``qnn,dml,cuda,cpu``); ``None``: the default.
        int8_weights: run a model whose weights are compressed to 8-bit integers
            (weight-only; openvino and onnxruntime).
    """

    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    resolution: int | None = None
    fast_postprocess: bool = False
    batch_size: int | None = None
    backend: Backend = "torch"
    backend_device: str | None = None
    int8_weights: bool = False

    @property
    def fixed_shapes(self) -> bool:
        """Whether each new input shape costs a compilation or a graph capture."""
        return self.compile or self.cuda_graphs

    def label(self) -> str:
        """A short human-readable name, e.g. ``bf16+channels_last+compile`` or
        ``openvino+bf16+int8_weights`` (the backend is named unless it is torch)."""
        parts: list[str] = []
        if self.backend != "torch":
            parts.append(self.backend + (f":{self.backend_device}" if self.backend_device else ""))
        parts.append(self.precision)
        parts += [f.name for f in fields(self) if f.type == "bool" and getattr(self, f.name)]
        if self.resolution is not None:
            parts.append(f"{self.resolution}px")
        if self.batch_size is not None:
            parts.append(f"batch{self.batch_size}")
        return "+".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for the autotune cache and ``doctor``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeOptions:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, bad values raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        options = cls(**{k: v for k, v in data.items() if k in known})
        if options.precision not in PRECISION_CHOICES:
            raise ValueError(f"unknown precision {options.precision!r}")
        if options.backend not in BACKEND_CHOICES:
            raise ValueError(f"unknown backend {options.backend!r}")
        return options
