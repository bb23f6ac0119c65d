"""Every error code the service can send, in one list: the ``error`` of an error response
and the ``error.code`` of a failed job.

The codes themselves are raised where they arise (``errors.py``, the routes, the job
runner); this registry says, for clients, which status each comes with and when.
``tests/test_error_codes.py`` keeps it complete (every code literal in ``src/mlsharp`` is
listed, nothing listed is unused) and keeps the tables of docs/api.md equal to
:func:`markdown_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ERROR_CODES", "ErrorCode", "markdown_tables"]


@dataclass(frozen=True)
class ErrorCode:
    """One code: ``status`` of the HTTP response that carries it (``None``: it only ends
    jobs), whether a failed job can carry it (``job``), and when it happens."""

    code: str
    status: int | None
    when: str
    job: bool = False


ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode("bad_request", 400, "malformed request"),
    ErrorCode(
        "invalid_idempotency_key",
        400,
        "`Idempotency-Key` not 1–255 printable ASCII characters without spaces",
    ),
    ErrorCode(
        "invalid_range",
        400,
        "malformed `Range` header (also: a number of more than 18 digits, more than 16 parts)",
    ),
    ErrorCode(
        "invalid_config",
        400,
        "an option the request or the job's settings cannot use (e.g. `depth` of a scene "
        "read from a file)",
        job=True,
    ),
    ErrorCode("unauthorized", 401, "API keys are configured and none was sent"),
    ErrorCode("forbidden", 403, "the API key is wrong"),
    ErrorCode(
        "not_found",
        404,
        "no such job, batch, webhook, route or result format; or another key's job; or expired",
    ),
    ErrorCode("method_not_allowed", 405, "wrong method for the path"),
    ErrorCode(
        "request_timeout",
        408,
        "the request body was not complete `body_timeout_seconds` after the headers (sent "
        "with `Connection: close`)",
    ),
    ErrorCode("not_acceptable", 406, "the `Accept` header excludes every type the route sends"),
    ErrorCode(
        "conflict",
        409,
        "result of a job that has not succeeded; archive of an unfinished batch without "
        "`partial=true`",
    ),
    ErrorCode("too_many_webhooks", 409, "the key already has `webhook_max_per_key` webhooks"),
    ErrorCode("output_exists", 409, "a result file exists already (not overwritten)", job=True),
    ErrorCode(
        "payload_too_large",
        413,
        "request body over `max_upload_bytes` (sent with `Connection: close`); a batch's "
        "photos over `max_batch_bytes` (a zip counted unpacked)",
    ),
    ErrorCode(
        "image_too_large",
        413,
        "image over `max_pixels`, or needing more than `max_decode_bytes` of memory to decode",
        job=True,
    ),
    ErrorCode(
        "too_many_files", 413, "batch over `max_batch_files`; zip listing more than 10,000 entries"
    ),
    ErrorCode("unsupported_media_type", 415, "the body's `Content-Type` is not the route's"),
    ErrorCode("range_not_satisfiable", 416, "`Range` beyond the end of the file"),
    ErrorCode(
        "validation_error",
        422,
        "a parameter or body field is missing or invalid (`message` names it)",
    ),
    ErrorCode("invalid_image", 422, "the upload is not a readable image", job=True),
    ErrorCode(
        "not_a_panorama",
        422,
        "`panorama=true` (or the file's XMP) says panorama, but the image is not 2:1 (nor a "
        "cube-map cross)",
        job=True,
    ),
    ErrorCode("empty_file", 422, "the uploaded file is empty"),
    ErrorCode("invalid_format", 422, "unknown output format in `formats`"),
    ErrorCode("idempotency_key_reused", 422, "same `Idempotency-Key`, different request"),
    ErrorCode("invalid_zip", 422, "the batch's zip is corrupt"),
    ErrorCode("empty_batch", 422, "no image in the batch"),
    ErrorCode("invalid_event", 422, "unknown webhook event"),
    ErrorCode(
        "webhook_url_refused", 422, "webhook URL not http(s), with credentials, or not public"
    ),
    ErrorCode("invalid_scene", 422, "a scene file that is not what its suffix says", job=True),
    ErrorCode("invalid_ply", 422, "a `.ply` that is not a 3DGS scene", job=True),
    ErrorCode("depth_unavailable", 400, "depth maps asked of a scene without depth", job=True),
    ErrorCode(
        "rate_limited",
        429,
        "over `rate_limit`, or this address sent more wrong keys than `auth_failure_limit`; "
        "`Retry-After` says when to retry",
    ),
    ErrorCode(
        "internal_error",
        500,
        "a bug (see the server log with the request id); for a job, a fault on the server's side",
        job=True,
    ),
    ErrorCode("checkpoint_error", 500, "the weights cannot be used (truncated, foreign)", job=True),
    ErrorCode("checkpoint_not_found", 500, "no weights on the server", job=True),
    ErrorCode("download_failed", 500, "downloading the weights failed", job=True),
    ErrorCode(
        "output_error", 500, "a result file cannot be written (permissions, encoder)", job=True
    ),
    ErrorCode(
        "corrupt_database",
        500,
        "a database file of the server is damaged or empty",
        job=True,
    ),
    ErrorCode(
        "non_finite_output",
        500,
        "the network predicted NaN or infinite values for this photo (nothing is written; "
        "other photos of its batch keep their results)",
        job=True,
    ),
    ErrorCode(
        "queue_full",
        503,
        "`max_queue` jobs are waiting, or a batch's photos do not all fit (a batch is queued "
        "whole or not at all); `Retry-After: 10`",
    ),
    ErrorCode(
        "service_unavailable",
        503,
        "the scale-out mode's Redis or object storage cannot be reached, or other uploads use "
        "the decoding memory (`max_decode_bytes`) for more than 30 s; `Retry-After`",
        job=True,
    ),
    ErrorCode("device_unavailable", 503, "the inference device is not available", job=True),
    ErrorCode(
        "out_of_memory",
        503,
        "the device ran out of memory for this photo and settings (the message says what to lower)",
        job=True,
    ),
    ErrorCode("storage_error", 503, "the server's data directory cannot be used", job=True),
    ErrorCode(
        "timeout", 504, "`POST /v1/predict` waited `sync_timeout_seconds`; the job continues"
    ),
    ErrorCode(
        "storage_full",
        507,
        "the server's disk is full (or a quota or file-size limit is reached)",
        job=True,
    ),
    ErrorCode("http_error", 0, "any other HTTP status the server framework answers"),
    ErrorCode("job_timeout", None, "the job ran longer than `job_time_limit_seconds`", job=True),
    ErrorCode(
        "too_many_attempts",
        None,
        "the job was started `job_max_attempts` times without finishing (its worker died or "
        "kept failing transiently); `message` quotes the last error",
        job=True,
    ),
    ErrorCode(
        "queue_message_dead",
        None,
        "scale-out mode: the job's queue message was dead-lettered (the queue's retries ran out)",
        job=True,
    ),
    ErrorCode("corrupt_record", None, "the job's stored record is malformed", job=True),
)


def markdown_tables() -> str:
    """The two tables of docs/api.md's Errors section: HTTP responses, then failed jobs."""
    lines = ["| status | `error` | when |", "|---|---|---|"]
    for entry in sorted((e for e in ERROR_CODES if e.status is not None), key=_by_status):
        status = str(entry.status) if entry.status else "other"
        lines.append(f"| {status} | `{entry.code}` | {entry.when} |")
    lines += ["", "A failed job's `error.code` is one of:", ""]
    lines += ["| `error.code` | when |", "|---|---|"]
    for entry in sorted((e for e in ERROR_CODES if e.job), key=lambda e: e.code):
        lines.append(f"| `{entry.code}` | {entry.when} |")
    return "\n".join(lines) + "\n"


def _by_status(entry: ErrorCode) -> tuple[int, int]:
    order = [e.code for e in ERROR_CODES]
    return (entry.status or 1000, order.index(entry.code))
