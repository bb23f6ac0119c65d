"""CUDA graphs for the fixed-shape forward (``RuntimeOptions.cuda_graphs``).

The network's shapes depend only on the batch size and the internal resolution, so one
graph per input shape is captured on first use and replayed afterwards: the inputs are
copied into static buffers, the graph replays every kernel with one launch, and the
outputs (static buffers too) are cloned so the next replay cannot overwrite a result
still in use. The caller's precision context (autocast, TF32 switches) is active during
capture and baked into the graph; autocast's weight cache must be off while capturing.
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
        self.device = device
        self._graphs: dict[tuple[tuple[int, ...], ...], _Captured] = {}
        self._pool: Any = None

    def reset(self) -> None:
        """Drop every captured graph and its memory (after a failure, or to free memory)."""
        self._graphs.clear()
        self._pool = None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        key = tuple(tuple(t.shape) for t in inputs)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture(inputs)
            self._graphs[key] = captured
        for static, value in zip(captured.inputs, inputs, strict=True):
            static.copy_(value)
        captured.graph.replay()
        return type(captured.output)(*(None if t is None else t.clone() for t in captured.output))

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Captured:
        static = tuple(t.clone() for t in inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.forward(*static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                output = self.forward(*static)
        except BaseException:
            self.reset()
            raise
        return _Captured(graph=graph, inputs=static, output=output)
