"""Device-to-host copies of results: pinned, asynchronous and overlapped on CUDA.

On CUDA, :class:`HostTransfer` copies each result tensor into page-locked (pinned) host
memory on a separate copy stream, ordered after the work that produced it by an event,
so the copy of one image's results overlaps the post-processing of the next; one wait at
the end makes the arrays valid. Elsewhere the tensors already live in host memory (CPU)
or are copied synchronously (MPS).
"""

from __future__ import annotations

import numpy as np
import torch


def _host_array(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous NumPy array of a CPU tensor that owns its memory (no views of a
    larger batch tensor are kept alive by the result)."""
    array = tensor.detach().numpy()
    if tensor.untyped_storage().nbytes() != tensor.nbytes or not array.flags.c_contiguous:
        array = np.array(array, order="C", copy=True)
    return array


class HostTransfer:
    """Collects device tensors and hands them back as host NumPy arrays.

    ``submit`` queues the copies of one result (a dict of tensors, ``None`` values pass
    through) and returns a handle; ``wait`` blocks until every queued copy is done and
    returns the arrays per handle, in submission order.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pending: list[dict[str, torch.Tensor | None]] = []
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def submit(self, tensors: dict[str, torch.Tensor | None]) -> int:
        """Queue the host copies of ``tensors``; returns the index of this result."""
        if self._stream is None:
            self._pending.append(
                {k: None if t is None else t.detach().cpu() for k, t in tensors.items()}
            )
            return len(self._pending) - 1
        produced = torch.cuda.Event()
        produced.record(torch.cuda.current_stream(self.device))
        staged: dict[str, torch.Tensor | None] = {}
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(produced)
            for key, tensor in tensors.items():
                if tensor is None:
                    staged[key] = None
                    continue
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                buffer.copy_(tensor, non_blocking=True)
                # Keep the caching allocator from reusing the source before the copy ran.
                tensor.record_stream(self._stream)
                staged[key] = buffer
        self._pending.append(staged)
        return len(self._pending) - 1

    def wait(self) -> list[dict[str, np.ndarray | None]]:
        """Block until all copies are done; the host arrays of every submitted result."""
        if self._stream is not None:
            self._stream.synchronize()
        results = [
            {k: None if t is None else _host_array(t) for k, t in staged.items()}
            for staged in self._pending
        ]
        self._pending = []
        return results


def to_host(tensors: dict[str, torch.Tensor | None]) -> dict[str, np.ndarray | None]:
    """Copy one dict of result tensors to host NumPy arrays (pinned + async on CUDA)."""
    devices = {t.device for t in tensors.values() if t is not None}
    device = devices.pop() if len(devices) == 1 else torch.device("cpu")
    transfer = HostTransfer(device)
    transfer.submit(tensors)
    return transfer.wait()[0]
