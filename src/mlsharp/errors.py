"""The one exception tree of mlsharp.

Every error a user can cause (a bad photo, a wrong checkpoint, a missing device) is an
``MlsharpError`` with a message that reads well on one line. Front ends map them in one
place: the CLI prints ``error: <message>`` and exits with ``exit_code``; the service (later)
maps ``http_status`` to a JSON error. Anything that is *not* an ``MlsharpError`` is a bug.

    MlsharpError
    ├── InvalidImage          the input cannot be decoded as an image
    │   └── ImageTooLarge     the image exceeds a configured limit (pixels / bytes)
    ├── CheckpointError       the weights file is missing, truncated, foreign or mismatched
    │   ├── CheckpointNotFound  no weights available locally (and none could be downloaded)
    │   └── DownloadError     the download failed (network, size or checksum mismatch)
    ├── DeviceError           the requested device is unavailable
    ├── OutputExists          the output file exists and overwriting was not asked for
    └── ConfigError           an invalid option or setting value
"""

from __future__ import annotations


class MlsharpError(Exception):
    """Base class of every error mlsharp reports to a user."""

    exit_code: int = 1
    http_status: int = 500
    code: str = "internal_error"


class InvalidImage(MlsharpError):
    """The input is not a readable image (unknown format, truncated, corrupt)."""

    exit_code = 3
    http_status = 422
    code = "invalid_image"


class ImageTooLarge(InvalidImage):
    """The image exceeds a configured size limit."""

    http_status = 413
    code = "image_too_large"


class CheckpointError(MlsharpError):
    """The checkpoint cannot be used (missing, truncated, foreign, shape mismatch)."""

    exit_code = 4
    http_status = 500
    code = "checkpoint_error"


class CheckpointNotFound(CheckpointError):
    """No checkpoint is available locally and none could be fetched."""

    code = "checkpoint_not_found"


class DownloadError(CheckpointError):
    """Downloading the checkpoint failed (network error, wrong size, wrong checksum)."""

    code = "download_failed"


class DeviceError(MlsharpError):
    """The requested compute device is not available on this machine."""

    exit_code = 5
    http_status = 503
    code = "device_unavailable"


class OutputExists(MlsharpError):
    """The output file already exists and overwriting was not requested."""

    exit_code = 6
    http_status = 409
    code = "output_exists"


class ConfigError(MlsharpError):
    """An option or setting has an invalid value."""

    exit_code = 2
    http_status = 400
    code = "invalid_config"
