"""``mlsharp random-checkpoint``: an untrained checkpoint for tests and demos."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlsharp._atomic import atomic_path


def write_random_checkpoint(preset: str, dest: Path, *, seed: int = 0) -> Path:
    """Write a randomly initialised (untrained) state dict of ``preset`` to ``dest``.

    The file has exactly the keys and shapes the real checkpoint has for that preset, so
    it exercises loading and inference end to end; its predictions are meaningless.
    Written atomically (temp file + rename).
    """
    import torch

    from mlsharp.model import build_model

    torch.manual_seed(seed)
    state_dict = build_model(preset).state_dict()
    with atomic_path(dest) as tmp:
        torch.save(state_dict, tmp)
    return dest


def run_random_checkpoint(args: argparse.Namespace) -> int:
    """Run the ``random-checkpoint`` command; prints the written path."""
    path = write_random_checkpoint(args.preset, Path(args.output), seed=args.seed)
    print(path)
    return 0
