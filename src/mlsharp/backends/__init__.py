"""The network forward behind one interface: ``torch`` (the reference), ``openvino``,
``onnxruntime`` (see :mod:`mlsharp.backends.base` and docs/hardware.md)."""

from mlsharp.backends.base import ForwardRuntime, RuntimeInfo

__all__ = ["ForwardRuntime", "RuntimeInfo"]
