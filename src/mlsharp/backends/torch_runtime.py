"""The ``torch`` runtime: the network as a PyTorch module (the reference path).

Precision contexts (autocast, TF32 scopes), channels-last decoders, ``torch.compile`` and
CUDA graphs are this runtime's options (docs/runtime.md); with the last two each new batch
size costs a compilation or a graph capture, so it has ``fixed_shapes`` and the engine
cuts batches into bucket sizes. On CUDA it measures the peak memory of each forward per
image, from which :meth:`TorchRuntime.suggested_batch_size` estimates how many photos fit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlsharp.backends.base import RuntimeInfo
from mlsharp.model import SharpModel
from mlsharp.model.composer import ComposedGaussians
from mlsharp.runtime.memory import estimate_batch_size, memory_use
from mlsharp.runtime.options import RuntimeOptions
from mlsharp.runtime.precision import precision_context


class TorchRuntime:
    """``SharpModel.forward`` under the options' precision policy, on a torch device."""

    name = "torch"

    def __init__(self, model: SharpModel, device: torch.device, options: RuntimeOptions) -> None:
        self.model = model.eval()
        self.cfg = model.cfg
        self.device = device
        self.options = options
        self.fixed_shapes = options.fixed_shapes
        if options.channels_last:
            model.set_memory_format(torch.channels_last)
        forward: Callable[..., ComposedGaussians] = model
        if options.compile:
            forward = torch.compile(model, dynamic=False)
        self._graphs = None
        if options.cuda_graphs:
            from mlsharp.runtime.cuda_graphs import CudaGraphForward

            self._graphs = CudaGraphForward(forward, device)
            forward = self._graphs
        self._forward = forward
        #: Peak bytes of one image's forward, measured on CUDA (for the batch estimate).
        self.bytes_per_image: int | None = None

    def run(self, images: torch.Tensor, disparity_factors: torch.Tensor) -> ComposedGaussians:
        """The forward under the precision policy; on CUDA also measures its peak memory."""
        measure = self.device.type == "cuda"
        if measure:
            baseline = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        # Autocast's weight cache cannot live across CUDA graph captures.
        with (
            torch.inference_mode(),
            precision_context(
                self.options.precision, self.device, autocast_cache=self._graphs is None
            ),
        ):
            composed = self._forward(images, disparity_factors)
        if measure:
            peak = torch.cuda.max_memory_allocated(self.device) - baseline
            per_image = peak // max(1, images.shape[0])
            self.bytes_per_image = max(self.bytes_per_image or 0, per_image)
        return composed

    def suggested_batch_size(self) -> int:
        """What fits in 80 % of the free CUDA memory once a forward was measured, else 1."""
        return estimate_batch_size(self.device, self.bytes_per_image)

    def reset(self) -> None:
        """Discard CUDA graphs whose capture may have failed half-way."""
        if self._graphs is not None:
            self._graphs.reset()

    def info(self) -> RuntimeInfo:
        """The torch device, precision and its memory in use (see ``memory_use``)."""
        use = memory_use(self.device)
        return RuntimeInfo(
            backend=self.name,
            device=str(self.device),
            precision=self.options.precision,
            version=str(torch.__version__),
            memory_bytes=use[0] if use else None,
        )
