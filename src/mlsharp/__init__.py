"""MLSharp 3D Maker: one photo in, a 3D Gaussian Splatting scene out.

Importing this package is cheap: it does not import torch. The heavy pieces live in
submodules (`mlsharp.engine`, `mlsharp.model`) and are imported where they are used.
"""

from mlsharp._version import __version__

__all__ = ["__version__"]
