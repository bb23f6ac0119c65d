"""Device-to-host copies of results: pinned, asynchronous and overlapped on CUDA.

On CUDA, :class:`HostTransfer` copies each result tensor into page-locked (pinned) host
memory on a separate copy stream, ordered after the work that produced it by an event,
so the copy of one image's results overlaps the post-processing of the next; one wait at
the end makes the arrays valid. Elsewhere the tensors already live in host memory (CPU)
or are copied synchronously (MPS).

The pinned memory is a :class:`PinnedStaging`: one buffer per photo of a batch, sized
to that photo's results (in whole pages), reused by later batches and given back by
:meth:`PinnedStaging.release` (the engine's memory guard calls it). The results handed
to the caller are ordinary host arrays copied out of it. ``tensor.pin_memory()`` would go
through PyTorch's caching host allocator instead, which rounds every block up to a power
of two and keeps freed blocks for the rest of the process: 2.4–6 GB for a batch of 16
full-size photos, never returned.
"""

from __future__ import annotations

import contextlib
import mmap

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

    A slot is allocated as ordinary host memory of the bytes asked for, rounded up to whole
    pages, and page-locked in place (``cudaHostRegister``), so its size is not rounded to a
    power of two; it is reused while later requests fit and replaced by a new one when
    they do not. :meth:`release` unlocks and frees every slot. On a device other than CUDA
    the slots are plain host memory (the same code path, for tests).

    Each slot starts on a page boundary and its locked range covers whole pages of its
    own allocation: CUDA locks whole pages and refuses a range that shares a page with
    one already locked, which small slots allocated next to each other would. A refused
    or failed registration leaves the slot pageable (copies into it are synchronous but
    correct), is not retried for this staging, and its error is consumed: the CUDA
    runtime would otherwise report it at the next kernel launch of this thread, failing
    an unrelated operation.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._slots: list[torch.Tensor] = []  # page-aligned views, whole pages each
        self._buffers: list[torch.Tensor] = []  # the allocations the slots live in
        self._registered: set[int] = set()  # data pointers page-locked by us
        #: False once a registration failed (e.g. WSL, or no lockable memory left).
        self.pinning = device.type == "cuda"

    @property
    def nbytes(self) -> int:
        """Bytes the slots provide (each request rounded up to whole pages)."""
        return sum(slot.numel() for slot in self._slots)

    @property
    def pinned_bytes(self) -> int:
        """Bytes of the slots that are page-locked."""
        return sum(s.numel() for s in self._slots if s.data_ptr() in self._registered)

    def slot(self, index: int, nbytes: int) -> torch.Tensor:
        """A uint8 host tensor of exactly ``nbytes`` in slot ``index`` (valid until the next
        call for the same slot or :meth:`release`)."""
        while len(self._slots) <= index:
            self._slots.append(torch.empty(0, dtype=torch.uint8))
            self._buffers.append(self._slots[-1])
        if self._slots[index].numel() < nbytes:
            self._unpin(self._slots[index])
            self._buffers[index], self._slots[index] = _page_aligned(nbytes)
            self._pin(self._slots[index])
        return self._slots[index][:nbytes]

    def release(self) -> None:
        """Unlock and free every slot."""
        for slot in self._slots:
            self._unpin(slot)
        self._slots, self._buffers = [], []

    def _pin(self, slot: torch.Tensor) -> None:
        if not self.pinning or slot.numel() == 0:
            return
        cudart = torch.cuda.cudart()
        # Flags 0: cudaHostRegisterDefault.
        if cudart.cudaHostRegister(slot.data_ptr(), slot.numel(), 0) == cudart.cudaError.success:
            self._registered.add(slot.data_ptr())
            return
        self.pinning = False
        consume_cuda_error(self.device)

    def _unpin(self, slot: torch.Tensor) -> None:
        pointer = slot.data_ptr()
        if pointer in self._registered:
            self._registered.discard(pointer)
            cudart = torch.cuda.cudart()
            if cudart.cudaHostUnregister(pointer) != cudart.cudaError.success:
                consume_cuda_error(self.device)


#: Host memory page size: the unit ``cudaHostRegister`` locks.
PAGE_SIZE = mmap.PAGESIZE


def _page_aligned(nbytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(allocation, view): a view of whole pages, at least ``nbytes``, starting on a page
    boundary inside a fresh host allocation (which it keeps alive)."""
    capacity = -(-nbytes // PAGE_SIZE) * PAGE_SIZE
    buffer = torch.empty(capacity + PAGE_SIZE, dtype=torch.uint8)
    offset = -buffer.data_ptr() % PAGE_SIZE
    return buffer, buffer[offset : offset + capacity]


def consume_cuda_error(device: torch.device) -> None:
    """Read and so reset the CUDA runtime's last error of this thread after a call whose
    failure was handled (``cudaHostRegister``). torch's bindings may lack
    ``cudaGetLastError``; then a one-element kernel launch reads it (torch checks the last
    error after each launch and raises it, which resets it)."""
    cudart = torch.cuda.cudart()
    get_last_error = getattr(cudart, "cudaGetLastError", None)
    if get_last_error is not None:
        get_last_error()
        return
    # A RuntimeError here is the pending error, now reset.
    with torch.cuda.device(device), contextlib.suppress(RuntimeError):
        torch.empty(1, device=device).fill_(0.0)


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
