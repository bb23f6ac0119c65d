"""Device-to-host copies through the reused staging buffers, sized to whole pages.

On this machine the staging is plain host memory; the layout, the sizes, the reuse and
the release are the same code that pins it on CUDA (there ``cudaHostRegister`` locks the
slots in place; the ``cuda`` tests below and ``benchmarks/gpu_check.py`` check on a GPU
that every slot is locked, that a refused registration leaves no CUDA error behind, and
that PyTorch's caching host allocator holds nothing after a batch).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlsharp.runtime.options import BATCH_BUCKETS, batch_bucket
from mlsharp.runtime.transfer import (
    ALIGNMENT,
    PAGE_SIZE,
    HostTransfer,
    PinnedStaging,
    staging_bytes,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def result(points: int, seed: int, depth: tuple[int, int] | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "positions": torch.randn(points, 3, generator=g),
        "rotations": torch.randn(points, 4, generator=g),
        "opacities": torch.rand(points, generator=g),
        "depth": None if depth is None else torch.rand(*depth, generator=g),
    }


def test_staging_is_sized_exactly_reused_and_released():
    staging = PinnedStaging(CPU)
    batch = [result(1001, 0, (48, 64)), result(1001, 1, (90, 160))]
    transfer = HostTransfer(CPU, staging=staging)
    for tensors in batch:
        transfer.submit(tensors)
    arrays = transfer.wait()
    slots = [slot.numpy() for slot in staging._slots]
    for tensors, host in zip(batch, arrays, strict=True):
        for key, tensor in tensors.items():
            if tensor is None:
                assert host[key] is None
                continue
            assert np.array_equal(host[key], tensor.numpy())
            # The caller's arrays are copies: the next batch reuses the staging.
            assert not any(np.shares_memory(host[key], slot) for slot in slots)
    # One slot per photo, each its result (each tensor padded to 64 bytes at most) rounded
    # up to whole pages.
    needed = [staging_bytes(t) for t in batch]
    assert sum(needed) <= staging.nbytes < sum(needed) + len(batch) * PAGE_SIZE
    held = staging.nbytes
    assert all(n - sum(t.nbytes for t in r.values() if t is not None) < 4 * ALIGNMENT
               for n, r in zip(needed, batch, strict=True))  # fmt: skip
    # A smaller batch reuses the slots; the arrays it returns are its own.
    smaller = HostTransfer(CPU, staging=staging)
    smaller.submit(result(10, 2))
    again = smaller.wait()[0]
    assert staging.nbytes == held
    assert np.array_equal(again["positions"], result(10, 2)["positions"].numpy())
    assert np.array_equal(arrays[0]["positions"], batch[0]["positions"].numpy())  # untouched
    staging.release()
    assert staging.nbytes == 0


def test_batch_buckets():
    assert [batch_bucket(n) for n in range(1, 18)] == [
        1, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16,
    ]  # fmt: skip
    assert batch_bucket(40) == 32 and batch_bucket(0) == 1
    assert all(batch_bucket(b) == b for b in BATCH_BUCKETS)


def page_span(view: torch.Tensor) -> range:
    """The pages (numbers) a slot's bytes lie on."""
    start = view.data_ptr()
    return range(start // PAGE_SIZE, (start + view.numel() - 1) // PAGE_SIZE + 1)


def test_slots_are_whole_pages_that_share_no_page():
    # CUDA locks whole pages and refuses a range sharing a page with a locked one: small
    # results of one batch, allocated next to each other, must still get pages of their own.
    staging = PinnedStaging(CPU)
    sizes = [1, 100, 4000, PAGE_SIZE, PAGE_SIZE + 1, 70_000, 3, 5]
    views = [staging.slot(index, size) for index, size in enumerate(sizes)]
    pages: set[int] = set()
    for slot, buffer, size in zip(staging._slots, staging._buffers, sizes, strict=True):
        assert slot.data_ptr() % PAGE_SIZE == 0 and slot.numel() % PAGE_SIZE == 0
        assert size <= slot.numel() < size + PAGE_SIZE
        # The slot lies inside its own allocation, so no other allocation shares its pages.
        assert buffer.data_ptr() <= slot.data_ptr()
        assert slot.data_ptr() + slot.numel() <= buffer.data_ptr() + buffer.numel()
        assert pages.isdisjoint(page_span(slot))
        pages |= set(page_span(slot))
    assert [v.numel() for v in views] == sizes
    assert not staging.pinning and staging.pinned_bytes == 0  # nothing to lock on the CPU


# --- CUDA only: skipped without a GPU, run by benchmarks/gpu_check.py on the device ---


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_small_slots_of_one_batch_are_all_page_locked():
    staging = PinnedStaging(CUDA)
    for index in range(8):
        staging.slot(index, 1000 + index)
    assert staging.pinning and staging.pinned_bytes == staging.nbytes
    result = {"x": torch.arange(250, device=CUDA, dtype=torch.float32)}
    transfer = HostTransfer(CUDA, staging=staging)
    transfer.submit(result)
    assert np.array_equal(transfer.wait()[0]["x"], np.arange(250, dtype=np.float32))
    staging.release()
    assert staging.nbytes == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_refused_registration_leaves_no_cuda_error_behind():
    # cudaHostRegister fails on a range that is already locked; the runtime keeps that
    # error as the thread's last error, which torch raises at the next kernel launch.
    staging = PinnedStaging(CUDA)
    staging.slot(0, 10_000)
    assert staging.pinned_bytes == staging.nbytes > 0
    again = PinnedStaging(CUDA)
    again._pin(staging._slots[0])  # the same pages again: refused
    assert not again.pinning  # not retried for this staging
    assert torch.ones(4, device=CUDA).add_(1).sum().item() == 8.0  # no stale error raised
    staging.release()
