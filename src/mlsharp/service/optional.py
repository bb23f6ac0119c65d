"""Optional dependencies of the scale-out mode (the ``[distributed]`` extra)."""

from __future__ import annotations

import importlib
from typing import Any

from mlsharp.errors import ConfigError


def require(module: str) -> Any:
    """Import ``module``, or raise a :class:`ConfigError` saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"the distributed mode needs the '{module}' package: pip install 'mlsharp[distributed]'"
        ) from None
