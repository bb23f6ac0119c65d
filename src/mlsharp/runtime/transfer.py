"""Device-to-host copies of results: pinned, asynchronous and overlapped on CUDA.

On CUDA, :class:`HostTransfer` copies each result tensor into page-locked (pinned) host
memory on a separate copy stream, ordered after the work that produced it by an event,
so the copy of one image's results overlaps the post-processing of the next; one wait at
the end makes the arrays valid. Elsewhere the tensors already live in host memory (CPU)
or are copied synchronously (MPS).

The pinned memory is a :class:`PinnedStaging`: one buffer per photo of a batch, sized
exactly to that photo's results, reused by later batches and given back by
:meth:`PinnedStaging.release` (the engine's memory guard calls it). The results handed
to the caller are ordinary host arrays copied out of it. ``tensor.pin_memory()`` would go
through PyTorch's caching host allocator instead, which rounds every block up to a power
of two and keeps freed blocks for the rest of the process: 2.4–6 GB for a batch of 16
full-size photos, never returned.
"""

from __future__ import annotations

import numpy as np
import torch

#: Byte alignment of each tensor inside a staging buffer (covers every dtype and keeps
#: the copies on aligned addresses).
ALIGNMENT = 64


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGNMENT) * ALIGNMENT


def staging_bytes(tensors: dict[str, torch.Tensor | None]) -> int:
    """Bytes one result needs in a staging buffer (each tensor aligned to :data:`ALIGNMENT`)."""
    return sum(_aligned(t.nbytes) for t in tensors.values() if t is not None)


class PinnedStaging:
    """Page-locked host buffers for device-to-host copies, one slot per photo of a batch.

    A slot is allocated as ordinary host memory of exactly the bytes asked for and then
    page-locked in place (``cudaHostRegister``), so its size is not rounded; it is reused
    while later requests fit and replaced by an exactly sized one when they do not.
    :meth:`release` unlocks and frees every slot. On a device other than CUDA the slots
    are plain host memory (the same code path, for tests).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._slots: list[torch.Tensor] = []
        self._registered: set[int] = set()  # data pointers page-locked by us

    @property
    def nbytes(self) -> int:
        """Bytes held in all slots."""
        return sum(slot.numel() for slot in self._slots)

    def slot(self, index: int, nbytes: int) -> torch.Tensor:
        """A uint8 host tensor of exactly ``nbytes`` in slot ``index`` (valid until the next
        call for the same slot or :meth:`release`)."""
        while len(self._slots) <= index:
            self._slots.append(torch.empty(0, dtype=torch.uint8))
        if self._slots[index].numel() < nbytes:
            self._unpin(self._slots[index])
            self._slots[index] = torch.empty(nbytes, dtype=torch.uint8)
            self._pin(self._slots[index])
        return self._slots[index][:nbytes]

    def release(self) -> None:
        """Unlock and free every slot."""
        for slot in self._slots:
            self._unpin(slot)
        self._slots = []

    def _pin(self, buffer: torch.Tensor) -> None:
        if self.device.type != "cuda" or buffer.numel() == 0:
            return
        pointer = buffer.data_ptr()
        # Flags 0 (cudaHostRegisterDefault). A failure (e.g. RLIMIT_MEMLOCK) only costs
        # speed: copies into pageable memory are synchronous but correct.
        cudart = torch.cuda.cudart()
        if cudart.cudaHostRegister(pointer, buffer.numel(), 0) == cudart.cudaError.success:
            self._registered.add(pointer)

    def _unpin(self, buffer: torch.Tensor) -> None:
        pointer = buffer.data_ptr()
        if pointer in self._registered:
            torch.cuda.cudart().cudaHostUnregister(pointer)
            self._registered.discard(pointer)


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

    With a ``staging`` (the engine's, reused between batches) the copies go through its
    slots; on CUDA without one, a temporary staging is used and released by ``wait``.
    """

    def __init__(self, device: torch.device, staging: PinnedStaging | None = None) -> None:
        self.device = device
        self._pending: list[dict[str, torch.Tensor | None]] = []
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._own_staging = staging is None and self._stream is not None
        self._staging = PinnedStaging(device) if self._own_staging else staging

    def submit(self, tensors: dict[str, torch.Tensor | None]) -> int:
        """Queue the host copies of ``tensors``; returns the index of this result."""
        if self._staging is None:
            self._pending.append(
                {k: None if t is None else t.detach().cpu() for k, t in tensors.items()}
            )
            return len(self._pending) - 1
        slot = self._staging.slot(len(self._pending), staging_bytes(tensors))
        staged: dict[str, torch.Tensor | None] = {}
        offset = 0
        for key, tensor in tensors.items():
            if tensor is None:
                staged[key] = None
                continue
            view = slot[offset : offset + tensor.nbytes].view(tensor.dtype).view(tensor.shape)
            offset += _aligned(tensor.nbytes)
            staged[key] = view
        if self._stream is None:  # host memory (a staging on the CPU): plain copies
            for key, tensor in tensors.items():
                if tensor is not None:
                    staged[key].copy_(tensor)  # type: ignore[union-attr]
        else:
            self._copy_async(tensors, staged)
        self._pending.append(staged)
        return len(self._pending) - 1

    def _copy_async(
        self, tensors: dict[str, torch.Tensor | None], staged: dict[str, torch.Tensor | None]
    ) -> None:
        assert self._stream is not None
        produced = torch.cuda.Event()
        produced.record(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(produced)
            for key, tensor in tensors.items():
                if tensor is None:
                    continue
                staged[key].copy_(tensor, non_blocking=True)  # type: ignore[union-attr]
                # Keep the caching allocator from reusing the source before the copy ran.
                tensor.record_stream(self._stream)

    def wait(self) -> list[dict[str, np.ndarray | None]]:
        """Block until all copies are done; the host arrays of every submitted result."""
        if self._stream is not None:
            self._stream.synchronize()
        if self._staging is None:
            results = [
                {k: None if t is None else _host_array(t) for k, t in staged.items()}
                for staged in self._pending
            ]
        else:
            # Out of the reused staging into arrays the caller owns (a parallel copy).
            results = [
                {k: None if t is None else t.clone().numpy() for k, t in staged.items()}
                for staged in self._pending
            ]
            if self._own_staging:
                self._staging.release()
        self._pending = []
        return results


def to_host(tensors: dict[str, torch.Tensor | None]) -> dict[str, np.ndarray | None]:
    """Copy one dict of result tensors to host NumPy arrays (pinned + async on CUDA)."""
    devices = {t.device for t in tensors.values() if t is not None}
    device = devices.pop() if len(devices) == 1 else torch.device("cpu")
    transfer = HostTransfer(device)
    transfer.submit(tensors)
    return transfer.wait()[0]
