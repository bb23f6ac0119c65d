"""CUDA graphs for the fixed-shape forward (``RuntimeOptions.cuda_graphs``).

The network's shapes depend only on the batch size and the internal resolution, so one
graph per input shape is captured on first use and replayed afterwards: the inputs are
copied into static buffers, the graph replays every kernel with one launch, and the
outputs (static buffers too) are cloned so the next replay cannot overwrite a result
still in use. The caller's precision context (autocast, TF32 switches) is active during
capture and baked into the graph; autocast's weight cache must be off while capturing.
The engine cuts batches into a few sizes (:data:`~mlsharp.runtime.options.BATCH_BUCKETS`)
so only a few graphs are captured.

Everything runs on the wrapper's device, whatever the calling thread's current device
is: worker threads start on ``cuda:0``, and ``torch.cuda.graph`` without a stream captures
on one stream shared by the whole process, created on whichever device was current the
first time. So the capture gets its own stream on this device, and capture and replay
run with this device current. The engine never runs two batches at once and its memory
guard never releases memory during a batch, so nothing synchronises during a capture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: Eager runs on a side stream before capture (lazy initialisation, cuDNN autotuning).
WARMUP_RUNS = 2


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: Any  # a NamedTuple of tensors (ComposedGaussians)


class CudaGraphForward:
    """Wraps ``forward(*tensors) -> NamedTuple of tensors`` with per-shape CUDA graphs."""

    def __init__(self, forward: Callable[..., Any], device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.forward = forward
        # An explicit index: "cuda" alone would mean the calling thread's current device.
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self._graphs: dict[tuple[tuple[int, ...], ...], _Captured] = {}
        self._pool: Any = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def captured_shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        """The input shapes a graph exists for."""
        return list(self._graphs)

    def reset(self) -> None:
        """Drop every captured graph and its memory (after a failure, or to free memory)."""
        self._graphs.clear()
        self._pool = None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        with torch.cuda.device(self.device):
            key = tuple(tuple(t.shape) for t in inputs)
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(inputs)
                self._graphs[key] = captured
            for static, value in zip(captured.inputs, inputs, strict=True):
                static.copy_(value)
            captured.graph.replay()
            output = captured.output
            return type(output)(*(None if t is None else t.clone() for t in output))

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Captured:
        static = tuple(t.to(self.device).clone() for t in inputs)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        side = self._stream
        current = torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.forward(*static)
        current.wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the other threads of a server (the copy stream of a finished
            # batch, metrics reading memory use) may go on using CUDA during the capture.
            with torch.cuda.graph(
                graph, pool=self._pool, stream=side, capture_error_mode="thread_local"
            ):
                output = self.forward(*static)
        except BaseException:
            self.reset()
            raise
        return _Captured(graph=graph, inputs=static, output=output)
