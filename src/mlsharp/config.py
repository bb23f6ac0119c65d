"""One ``Settings`` object for every front end, built once and passed down.

Precedence, highest first: command-line flags > ``MLSHARP_*`` environment variables >
the config file (YAML, JSON or TOML, from ``--config FILE`` or ``$MLSHARP_CONFIG``) >
defaults. Each field's environment variable is ``MLSHARP_`` + its name in capitals, e.g.
``MLSHARP_DATA_DIR``, ``MLSHARP_API_KEYS`` (comma-separated), ``MLSHARP_RATE_LIMIT``.

``mlsharp config show`` prints the effective values with secrets masked.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mlsharp.choices import (
    BACKEND_CHOICES,
    DEVICE_CHOICES,
    LOG_FORMATS,
    PRECISION_CHOICES,
    PRESET_CHOICES,
    Backend,
    LogFormat,
    Precision,
    Preset,
    check_device_name,
)
from mlsharp.errors import ConfigError
from mlsharp.runtime.options import RuntimeOptions

__all__ = ["DEVICE_CHOICES", "LOG_FORMATS", "PRESET_CHOICES", "Settings", "default_data_dir"]

_RATE_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day|s|m|h|d)\s*$")
_SECRET_FIELDS = frozenset({"api_keys", "s3_secret_access_key"})
MASK = "********"

# The parsed config file for the Settings being built right now (see Settings.load).
_config_file_values: ContextVar[dict[str, Any] | None] = ContextVar(
    "_config_file_values", default=None
)


def default_data_dir() -> Path:
    """Where the service keeps jobs, results and its database unless told otherwise.

    Always apart from the weights cache (``mlsharp.weights.cache_dir``): on Windows that is
    ``%LOCALAPPDATA%\\mlsharp\\Cache``, so the data go to ``...\\mlsharp\\Data`` (with
    the data directly in ``...\\mlsharp``, the result cache ``cache`` *was* the weights
    folder on a case-insensitive disk, and its sweep deleted the 2.8 GB checkpoint)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "mlsharp" / "Data"
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "mlsharp"


# Folders of the data directory whose files the service deletes when it does not know them
# (the result cache's sweep) or with a job: nothing else may live there.
SERVICE_OWNED_FOLDERS = ("cache", "jobs", "s3-staging")


def check_data_dir_apart(data_dir: Path, weights_dir: Path) -> None:
    """Refuse a data directory that would share files with the weights cache: the
    weights folder must not be the data directory itself nor lie inside a folder the
    service cleans up. Compared without case on Windows and macOS (their disks ignore it).

    Raises:
        ConfigError: naming both folders and what to change.
    """
    fold = sys.platform in ("win32", "darwin")

    def parts(path: Path) -> tuple[str, ...]:
        resolved = Path(os.path.abspath(path.expanduser())).parts
        return tuple(p.casefold() for p in resolved) if fold else resolved

    weights, data = parts(weights_dir), parts(data_dir)
    owned = [(*data, name) for name in SERVICE_OWNED_FOLDERS]
    if weights == data or any(weights[: len(folder)] == folder for folder in owned):
        raise ConfigError(
            f"the data directory {data_dir} holds the weights folder {weights_dir}; the "
            "service would delete the weights as unknown files: choose another --data-dir "
            "(or MLSHARP_CACHE for the weights)"
        )


def parse_rate(text: str) -> tuple[int, float]:
    """``"30/minute"`` -> ``(30, 60.0)``: requests allowed per window of seconds."""
    match = _RATE_PATTERN.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(
            f"invalid rate {text!r}; write it as COUNT/UNIT, e.g. 30/minute (units: "
            "second, minute, hour, day)"
        )
    window = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[match.group(2)[0]]
    return int(match.group(1)), window


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML, JSON or TOML settings file (chosen by suffix) into a dict."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {file}: {e.strerror or e}") from None
    suffix = file.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # the backport (a dependency on Python 3.10)
                import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config file {file}: use a .yaml, .yml, .json or .toml file")
    except ConfigError:
        raise
    except Exception as e:  # each parser has its own error type; all mean "bad syntax"
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {file} is not valid {suffix[1:]}: {first_line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file} must hold a mapping of setting names to values")
    # Accept both `data_dir` and `data-dir` spellings in files.
    return {str(k).replace("-", "_"): v for k, v in data.items()}


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the config file chosen in :meth:`Settings.load`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        values = _config_file_values.get() or {}
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        values = _config_file_values.get() or {}
        return {k: v for k, v in values.items() if k in self.settings_cls.model_fields}


class Settings(BaseSettings):
    """Every knob of mlsharp; docs/configuration.md has the full table."""

    model_config = SettingsConfigDict(
        env_prefix="MLSHARP_", extra="forbid", frozen=True, validate_default=True
    )

    # --- the model (shared with `mlsharp predict`) ---
    checkpoint: str | None = Field(None, description="path or URL of the .pt checkpoint")
    preset: Preset = Field("sharp", description=f"network preset: {', '.join(PRESET_CHOICES)}")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    offline: bool = Field(False, description="never download the checkpoint")
    autotune: bool = Field(
        False,
        description="use the runtime options `mlsharp autotune` chose for this device "
        "(measured at start-up when not cached)",
    )

    # --- how the network runs (docs/runtime.md); defaults reproduce the reference ---
    precision: Precision = Field(
        "fp32",
        description=f"network precision: {', '.join(PRECISION_CHOICES)} (fp32: the reference)",
    )
    resolution: int | None = Field(
        None, description="internal resolution in px, a multiple of 512 (default: the preset's)"
    )
    channels_last: bool = Field(False, description="channels-last convolutional decoders")
    compile: bool = Field(False, description="torch.compile the network (slow first run)")
    cuda_graphs: bool = Field(False, description="replay the forward as a CUDA graph (CUDA)")
    fast_postprocess: bool = Field(
        False, description="float32 covariance decomposition on the device (not float64)"
    )
    batch_size: int | None = Field(
        None, ge=1, le=64, description="images per forward in batches (default: by memory)"
    )
    backend: Backend = Field(
        "auto",
        description=f"what runs the network: {', '.join(BACKEND_CHOICES)} (docs/hardware.md)",
    )
    backend_device: str | None = Field(
        None,
        max_length=200,
        description="OpenVINO device (CPU, GPU, NPU, AUTO) or ONNX Runtime providers in order "
        "(e.g. qnn,dml,cuda,cpu)",
    )
    int8_weights: bool = Field(
        False, description="8-bit weight-only compressed network (openvino, onnxruntime)"
    )
    memory_release_idle_seconds: float = Field(
        0.0, ge=0, description="release cached device memory after this long idle (0: never)"
    )
    memory_reclaim_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="after a job, release cached memory above this fraction of the device's",
    )

    # --- the service ---
    host: str = Field("127.0.0.1", description="address `mlsharp serve` listens on")
    port: int = Field(8000, ge=1, le=65535, description="port `mlsharp serve` listens on")
    data_dir: Path = Field(
        default_factory=default_data_dir, description="jobs, results, cache and database"
    )
    public_url: str | None = Field(
        None, description="external base URL (https://host) for absolute links in webhooks"
    )
    workers: int = Field(
        1, ge=0, le=64, description="in-process inference workers (0: API only, no inference)"
    )
    max_upload_bytes: int = Field(64 * 2**20, ge=1, description="largest accepted request body")
    max_pixels: int = Field(50_000_000, ge=1, description="largest accepted image (width*height)")
    max_queue: int = Field(100, ge=1, description="queued jobs before new ones get 503")
    max_batch_files: int = Field(50, ge=1, description="images accepted in one batch")
    max_batch_bytes: int | None = Field(
        None,
        ge=1,
        description="total bytes of one batch's photos, a zip counted unpacked "
        "(default: twice max_upload_bytes)",
    )
    max_decode_bytes: int = Field(
        2 * 2**30,
        ge=1,
        description="memory the images decoded at once may take (estimated from headers)",
    )
    result_ttl_hours: float = Field(
        168.0, ge=0, description="hours finished jobs stay downloadable (0: forever)"
    )
    sync_timeout_seconds: float = Field(
        600.0, gt=0, description="how long POST /v1/predict waits for its job"
    )
    default_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ply"], description="output formats when a job names none"
    )
    cache_enabled: bool = Field(True, description="reuse results for identical inputs")
    cache_max_bytes: int = Field(2 * 2**30, ge=0, description="disk budget of the result cache")
    previews: bool = Field(True, description="render a .preview.png thumbnail for each job")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="time a client has to send a request's headers"
    )
    body_timeout_seconds: float = Field(
        120.0, gt=0, description="time a client has to send a request's whole body"
    )
    max_connections: int = Field(
        1000, ge=1, description="open connections and requests before new ones get 503"
    )

    # --- access control ---
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted API keys (comma-separated); empty: open"
    )
    rate_limit: str | None = Field(None, description="requests per key, e.g. 30/minute")
    auth_failure_limit: str | None = Field(
        "10/minute", description="wrong API keys per client address before it gets 429"
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses of reverse proxies whose X-Forwarded-For names the client",
    )
    protect_health: bool = Field(False, description="require a key for /v1/health and /v1/ready")
    protect_metrics: bool = Field(False, description="require a key for /metrics")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (comma-separated)"
    )

    # --- webhooks ---
    webhook_allow_private: bool = Field(
        False, description="allow webhook URLs on loopback/private/link-local addresses"
    )
    webhook_max_attempts: int = Field(6, ge=1, le=50, description="delivery attempts per event")
    webhook_backoff_seconds: float = Field(
        2.0, ge=0, description="delay before the first retry; doubles after each failure"
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="per-delivery HTTP timeout")
    webhook_concurrency: int = Field(
        8, ge=1, le=256, description="delivery attempts in flight at once (one per endpoint)"
    )
    webhook_max_per_key: int = Field(
        10, ge=1, le=1000, description="webhooks one API key (or the open service) may register"
    )

    # --- scale-out (docs/deployment.md): Redis queue, shared state, object storage ---
    queue: str | None = Field(
        None, description="redis://HOST:PORT/DB: distributed mode (jobs, queue, cache in Redis)"
    )
    queue_namespace: str = Field(
        "mlsharp", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="prefix of every Redis key"
    )
    queue_heartbeat_seconds: float = Field(
        30.0, gt=0, description="a silent worker is dead after this; its job runs elsewhere"
    )
    queue_grace_seconds: float = Field(
        30.0,
        gt=0,
        description="a job left without a queue message this long is sent again (or failed)",
    )
    job_time_limit_seconds: float = Field(600.0, gt=0, description="longest run of one job")
    job_max_attempts: int = Field(
        3, ge=1, le=20, description="runs of a job (first try + retries) before it fails"
    )
    job_retry_backoff_seconds: float = Field(
        5.0, ge=0, description="delay before the first retry of a failed run; doubles"
    )
    storage: Literal["local", "s3"] = Field("local", description="where job files live")
    s3_bucket: str | None = Field(None, description="bucket of job inputs, results and cache")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (not AWS)")
    s3_region: str | None = Field(None, description="S3 region")
    s3_access_key_id: str | None = Field(None, description="S3 access key (else the AWS chain)")
    s3_secret_access_key: str | None = Field(None, description="S3 secret key")
    s3_prefix: str = Field("", description="key prefix inside the bucket, e.g. mlsharp/")
    s3_downloads: Literal["stream", "redirect"] = Field(
        "stream", description="results streamed by the API or a 307 to a presigned URL"
    )
    s3_presign_seconds: int = Field(3600, ge=1, le=604800, description="presigned URL lifetime")

    # --- logging ---
    log_format: LogFormat = Field("text", description=f"log line format: {', '.join(LOG_FORMATS)}")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="least severe log level shown"
    )

    @field_validator(
        "api_keys", "cors_origins", "default_formats", "trusted_proxies", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("the queue must be a Redis URL: redis://HOST:PORT/DB")
        return value

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, value: int | None) -> int | None:
        # The full check (upper bound per preset) happens when the engine is built.
        if value is not None and (value < 512 or value % 512):
            raise ValueError(
                f"resolution {value} is not a positive multiple of 512: use 512, 1024, 1536, "
                "... up to twice the preset's native resolution (sharp: 1536, tiny: 512; "
                "see docs/runtime.md)"
            )
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _lower_precision(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return check_device_name(value)

    @field_validator("rate_limit", "auth_failure_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value in (None, "", "none", "off"):
            return None
        parse_rate(value)
        return value

    @field_validator("backend_device")
    @classmethod
    def _check_backend_device(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.fullmatch(r"[A-Za-z0-9_.,: -]+", value):
            raise ValueError(
                "backend_device names an OpenVINO device (CPU, GPU, GPU.1, NPU, AUTO) or "
                "comma-separated ONNX Runtime providers (letters, digits, . _ , : -)"
            )
        return value.strip()

    @field_validator("log_level", "log_format", "preset", "backend", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init arguments) > environment > config file > defaults."""
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @classmethod
    def load(cls, config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
        """Build the effective settings; ``None`` overrides (flags not given) are ignored.

        ``config_file`` defaults to ``$MLSHARP_CONFIG``. Raises :class:`ConfigError` with
        one readable line for any invalid value.
        """
        path = config_file or os.environ.get("MLSHARP_CONFIG") or None
        file_values = read_config_file(path) if path else {}
        unknown = sorted(set(file_values) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
        token = _config_file_values.set(file_values)
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as e:
            raise ConfigError(_describe_validation_error(e, given, path)) from None
        finally:
            _config_file_values.reset(token)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Alias of :meth:`load` without an explicit config file (kept for the CLI)."""
        return cls.load(None, **overrides)

    def runtime_options(self) -> RuntimeOptions:
        """The engine's :class:`~mlsharp.runtime.options.RuntimeOptions` from these settings."""
        return RuntimeOptions(
            precision=self.precision,
            channels_last=self.channels_last,
            compile=self.compile,
            cuda_graphs=self.cuda_graphs,
            resolution=self.resolution,
            fast_postprocess=self.fast_postprocess,
            batch_size=self.batch_size,
            backend=self.backend,
            backend_device=self.backend_device,
            int8_weights=self.int8_weights,
        )

    def rate(self) -> tuple[int, float] | None:
        """The parsed :attr:`rate_limit`, or ``None`` when unlimited."""
        return parse_rate(self.rate_limit) if self.rate_limit else None

    def auth_failure_rate(self) -> tuple[int, float] | None:
        """The parsed :attr:`auth_failure_limit`, or ``None`` when wrong keys are not
        throttled."""
        return parse_rate(self.auth_failure_limit) if self.auth_failure_limit else None

    def masked(self) -> dict[str, Any]:
        """The settings as JSON-ready values with secrets replaced by a mask."""
        values = self.model_dump(mode="json")
        for name in _SECRET_FIELDS:
            if values.get(name):
                value = values[name]
                values[name] = MASK if isinstance(value, str) else [MASK for _ in value]
        if values.get("queue"):  # a Redis URL may carry a password
            values["queue"] = re.sub(r"(//[^:/@]*:)[^@/]*@", rf"\1{MASK}@", values["queue"])
        return values


def _describe_validation_error(
    error: ValidationError, flags: dict[str, Any], config_file: Any = None
) -> str:
    """One line naming the setting, where its value came from, and what is wrong."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    name = where.split(".")[0]
    if name in flags:  # precedence: a flag beats the environment and the file
        source = f"--{name.replace('_', '-')}"
    elif f"MLSHARP_{name.upper()}" in os.environ:
        source = f"MLSHARP_{name.upper()}"
    elif config_file:
        source = f"config file {config_file}"
    else:
        source = f"MLSHARP_{name.upper()}"
    return f"invalid setting {where} ({source}): {message}"
