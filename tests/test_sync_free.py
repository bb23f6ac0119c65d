"""The network forward never synchronises the host with the device.

A CUDA graph capture fails on any host<->device copy or ``.item()`` inside the captured
region, and in eager mode each one is a blocking sync. Those operations are visible on
the CPU too, as aten calls: ``aten._local_scalar_dense`` (``.item()``, ``int(t)``,
``bool(t)``, ``.tolist()``), ``aten.lift_fresh`` (a tensor made from Python data) and a
``copy_`` from a 0-dim tensor (``t[i] = 1.0`` copies a wrapped CPU scalar into ``t``).
:class:`~mlsharp.runtime.host_syncs.HostSyncCounter` counts them (and ops with
data-dependent shapes) over the whole forward on the CPU; the count must be zero. (On a
GPU, ``benchmarks/gpu_check.py`` also runs the forward under
``torch.cuda.set_sync_debug_mode("error")``.)
"""

from __future__ import annotations

import pytest
import torch

from mlsharp.engine import Engine
from mlsharp.model.composer import _filled
from mlsharp.runtime.host_syncs import HostSyncCounter
from mlsharp.runtime.options import RuntimeOptions


def test_the_counter_sees_scalar_assignment_and_item():
    # The counter must catch what it is meant to catch, or the zero below proves nothing.
    with HostSyncCounter() as counter:
        out = torch.empty(2)
        out[0] = 1.5
        out.sum().item()
        out[out > 1.0]
        out.nonzero()
    assert counter.calls["aten.lift_fresh.default"] == 1
    assert counter.calls["aten.copy_.default from a 0-dim tensor"] == 1
    assert counter.calls["aten._local_scalar_dense.default"] == 1
    assert counter.calls["aten.index.Tensor with a boolean mask"] == 1
    assert counter.calls["aten.nonzero.default"] == 1


def test_filled_constants_need_no_host_copy():
    with HostSyncCounter() as counter:
        values = _filled((1.0, 0.0, 0.25), torch.device("cpu"))
    assert not counter.calls
    assert values.tolist() == [1.0, 0.0, 0.25]


@pytest.mark.parametrize(
    "options",
    [RuntimeOptions(), RuntimeOptions(precision="bf16", channels_last=True)],
    ids=lambda o: o.label(),
)
def test_forward_has_no_host_syncs(tiny_checkpoint, options):
    engine = Engine.load(
        tiny_checkpoint, preset="tiny", device="cpu", download=False, options=options
    )
    size = engine.internal_resolution
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    factor = torch.tensor([0.8, 1.1])
    with HostSyncCounter() as counter:
        composed = engine.runtime.run(image, factor)  # the region a CUDA graph captures
    assert dict(counter.calls) == {}
    assert torch.isfinite(composed.mean_vectors).all()
