"""The SHARP network in plain PyTorch (no files, no HTTP, no device policy).

``build_model("sharp")`` reproduces the architecture of Apple's released checkpoint key
for key; ``build_model("tiny")`` is the same graph at toy size for tests.
"""

from mlsharp.model.composer import ComposedGaussians
from mlsharp.model.config import PRESETS, SharpConfig, ViTConfig, preset
from mlsharp.model.sharp import SharpModel, build_model

__all__ = [
    "PRESETS",
    "ComposedGaussians",
    "SharpConfig",
    "SharpModel",
    "ViTConfig",
    "build_model",
    "preset",
]
