"""Counting what would make a forward wait for the device or copy host data onto it.

A CUDA graph capture fails on a host<->device copy, an ``.item()`` or an op whose output
shape depends on the data inside the captured region, and in eager mode each one is a
blocking sync. They are visible as aten calls on any device, so :class:`HostSyncCounter`
(a ``TorchDispatchMode``) finds them on the CPU too:

* ``aten._local_scalar_dense``: ``.item()``, ``int(t)``, ``bool(t)``, ``.tolist()``;
* ``aten.lift_fresh``: a tensor made from Python data (``torch.tensor([...])``);
* ``copy_`` from a 0-dim tensor: ``t[i] = 1.0`` copies a wrapped CPU scalar into ``t``;
* data-dependent shapes: ``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave``
  without an output size, indexing with a boolean mask.

Used by the tests (the forward must count zero) and by ``benchmarks/gpu_check.py``, which
on a GPU also runs the forward under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNCING_OPS = (
    "aten._local_scalar_dense",
    "aten.lift_fresh",
    "aten.nonzero",
    "aten.masked_select",
    "aten.unique",
    "aten._unique",
    "aten.repeat_interleave.Tensor",
)


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as counter: ...``; ``counter.calls`` counts each kind."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        name = str(func)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name.startswith(_SYNCING_OPS):
            self.calls[name] += 1
        elif name.startswith("aten.copy_") and len(tensors) > 1 and tensors[1].dim() == 0:
            self.calls[f"{name} from a 0-dim tensor"] += 1
        elif name.startswith("aten.index.Tensor") and _has_bool_index(args):
            self.calls[f"{name} with a boolean mask"] += 1
        return func(*args, **(kwargs or {}))


def _has_bool_index(args: Any) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices if i is not None
    )
