"""Device-to-host copies through the reused, exactly sized staging buffers.

On this machine the staging is plain host memory; the layout, the sizes, the reuse and
the release are the same code that pins it on CUDA (there ``cudaHostRegister`` locks the
slots in place; ``benchmarks/gpu_check.py`` checks on a GPU that PyTorch's caching host
allocator holds nothing after a batch).
"""

from __future__ import annotations

import numpy as np
import torch

from mlsharp.runtime.options import BATCH_BUCKETS, batch_bucket
from mlsharp.runtime.transfer import ALIGNMENT, HostTransfer, PinnedStaging, staging_bytes

CPU = torch.device("cpu")


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
    # One slot per photo, each exactly its result (each tensor padded to 64 bytes at most).
    needed = [staging_bytes(t) for t in batch]
    assert staging.nbytes == sum(needed)
    assert all(n - sum(t.nbytes for t in r.values() if t is not None) < 4 * ALIGNMENT
               for n, r in zip(needed, batch, strict=True))  # fmt: skip
    # A smaller batch reuses the slots; the arrays it returns are its own.
    smaller = HostTransfer(CPU, staging=staging)
    smaller.submit(result(10, 2))
    again = smaller.wait()[0]
    assert staging.nbytes == sum(needed)
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
