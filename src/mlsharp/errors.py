"""The one exception tree of mlsharp.

Every error a user can cause (a bad photo, a wrong checkpoint, a missing device) is an
``MlsharpError`` with a message that reads well on one line. Front ends map them in one
place: the CLI prints ``error: <message>`` and exits with ``exit_code``; the service (later)
maps ``http_status`` to a JSON error. Anything that is *not* an ``MlsharpError`` is a bug.

    MlsharpError
    ├── InvalidImage          the input cannot be decoded as an image
    │   ├── ImageTooLarge     the image exceeds a configured limit (pixels / bytes)
    │   └── NotAPanorama      a photo given as a 360° panorama does not have its shape
    ├── CheckpointError       the weights file is missing, truncated, foreign or mismatched
    │   ├── CheckpointNotFound  no weights available locally (and none could be downloaded)
    │   └── DownloadError     the download failed (network, size or checksum mismatch)
    ├── DeviceError           the requested device is unavailable
    ├── OutputExists          the output file exists and overwriting was not asked for
    ├── OutputError           the output cannot be written (permissions, missing folder, disk)
    ├── ConfigError           an invalid option or setting value
    ├── OutOfMemory           the device ran out of memory for this input and settings
    ├── NonFiniteOutput       the prediction holds NaN or infinite values (never written)
    ├── StorageError          the service's data directory cannot be used
    │   ├── StorageFull       the disk is full (or a quota or file-size limit is reached) (507)
    │   └── CorruptDatabase   a database file is damaged or empty; the message says what to do
    └── RequestError          the service refuses a request (the HTTP 4xx/503 family)
        ├── BadRequest        malformed parameters (400/422)
        ├── PayloadTooLarge   the request body exceeds the configured limit (413)
        ├── Unauthorized      no API key was sent (401)
        ├── Forbidden         the API key is wrong (403)
        ├── NotFound          no such job, batch, webhook or result (404)
        ├── Conflict          the request clashes with the resource's state (409)
        ├── RateLimited       too many requests for this key (429, with retry_after)
        ├── QueueFull         the job queue is at its limit (503, with retry_after)
        └── ServiceUnavailable  a backend (Redis, object storage) is unreachable (503)
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


class NotAPanorama(InvalidImage):
    """A photo given (or tagged) as a 360° panorama does not have a panorama's shape."""

    code = "not_a_panorama"


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


class OutputError(MlsharpError):
    """An output file cannot be written: no permission, its folder is missing or is a
    file, a folder is in its place, the disk is full, the encoder failed."""

    exit_code = 1
    http_status = 500
    code = "output_error"


class ConfigError(MlsharpError):
    """An option or setting has an invalid value."""

    exit_code = 2
    http_status = 400
    code = "invalid_config"


class OutOfMemory(MlsharpError):
    """The device ran out of memory running the network; the message names the device,
    resolution and precision and suggests what to lower. The engine stays usable."""

    exit_code = 7
    http_status = 503
    code = "out_of_memory"


class NonFiniteOutput(MlsharpError):
    """The network predicted NaN or infinite values for a photo (broken weights, a
    precision that overflowed, an input far outside what it was trained on). Nothing is
    written; the message says how many Gaussians and which attributes."""

    exit_code = 1
    http_status = 500
    code = "non_finite_output"


class StorageError(MlsharpError):
    """The service's data directory (its databases, job files) cannot be used."""

    exit_code = 8
    http_status = 503
    code = "storage_error"


class StorageFull(StorageError):
    """A write failed because the disk is full, or a quota or file-size limit is reached."""

    http_status = 507
    code = "storage_full"


class CorruptDatabase(StorageError):
    """A database file is damaged (not a database, malformed) or empty; the message names
    the file and what to do (restore a backup, or move it away)."""

    http_status = 500
    code = "corrupt_database"


class RequestError(MlsharpError):
    """The service refuses a request; ``http_status`` is the response status."""

    http_status = 400
    code = "bad_request"
    #: Seconds a client should wait before retrying (sent as ``Retry-After``), if any.
    retry_after: float | None = None


class BadRequest(RequestError):
    """Malformed or invalid request parameters."""

    def __init__(self, message: str, *, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.http_status = status
        self.code = code


class PayloadTooLarge(RequestError):
    """The request body is larger than ``max_upload_bytes``."""

    http_status = 413
    code = "payload_too_large"


class Unauthorized(RequestError):
    """An API key is required and none was sent."""

    http_status = 401
    code = "unauthorized"


class Forbidden(RequestError):
    """The API key sent is not valid."""

    http_status = 403
    code = "forbidden"


class NotFound(RequestError):
    """The job, batch, webhook or result does not exist (or has expired)."""

    http_status = 404
    code = "not_found"


class Conflict(RequestError):
    """The request clashes with the resource's current state."""

    http_status = 409
    code = "conflict"


class RateLimited(RequestError):
    """The client exceeded its request rate."""

    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(RequestError):
    """The job queue is full; the client should retry later."""

    http_status = 503
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: float = 5.0):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(RequestError):
    """A backend the service needs (Redis, object storage) cannot be reached right now."""

    http_status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 5.0):
        super().__init__(message)
        self.retry_after = retry_after
