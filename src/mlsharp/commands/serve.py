"""``mlsharp serve`` (the REST API) and ``mlsharp config show``."""

from __future__ import annotations

import argparse
import errno
import json
import socket

from mlsharp.config import Settings
from mlsharp.errors import ConfigError


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags given on the command line override environment, config file and defaults."""
    flags = {
        name: getattr(args, name, None)
        for name in (
            "host",
            "port",
            "data_dir",
            "checkpoint",
            "preset",
            "device",
            "workers",
            "log_format",
            "offline",
            "autotune",
            "queue",
            "precision",
            "resolution",
            "batch_size",
            "backend",
            "backend_device",
            "int8_weights",
        )
    }
    settings = Settings.load(getattr(args, "config", None), **flags)
    if settings.queue and "workers" not in settings.model_fields_set:
        # Scale-out: API instances only enqueue unless workers were asked for explicitly.
        settings = settings.model_copy(update={"workers": 0})
    return settings


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line (not a uvicorn traceback) when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            reason = "is already in use" if e.errno == errno.EADDRINUSE else f"({e.strerror})"
            raise ConfigError(f"cannot listen on {host}:{port}: the address {reason}") from None


def check_runtime_options(settings: Settings) -> None:
    """Raise :class:`ConfigError` now, before serving, when the runtime options (precision,
    resolution, CUDA graphs, ...) cannot run on the configured device and preset, rather
    than starting a server whose model never becomes ready."""
    from mlsharp.engine import check_options, engine_device
    from mlsharp.model import preset

    options = settings.runtime_options()
    check_options(options, preset(settings.preset), engine_device(settings.device, options))


def run_serve(args: argparse.Namespace) -> int:
    """Start the API server and block until it is stopped (Ctrl-C / SIGTERM)."""
    settings = settings_from_args(args)
    _check_port_free(settings.host, settings.port)
    if settings.workers > 0:
        # Resolve (and if needed download, with a progress bar) before serving, so a
        # missing checkpoint is one clear line here instead of a failed readiness later.
        from mlsharp.weights import resolve_checkpoint

        resolve_checkpoint(settings.checkpoint, download=not settings.offline, progress=True)
        if not settings.autotune:  # autotune only picks options the device can run
            check_runtime_options(settings)
        else:
            # Tune now, in the foreground with a progress bar, so the model load in the
            # lifespan finds the result in the cache (docs/doctor.md).
            from mlsharp.runtime.autotune import server_options

            options = server_options(settings, progress=True)
            print(f"mlsharp: autotune chose {options.label()}")

    from mlsharp.service.backends import check_databases

    check_databases(settings)  # a damaged database: one line, not a start-up traceback

    import uvicorn

    from mlsharp.service.app import create_app
    from mlsharp.service.logs import configure_logging
    from mlsharp.service.server import uvicorn_options

    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    url = f"http://{settings.host}:{settings.port}"
    print(f"mlsharp: serving on {url} (web page {url}/, API docs {url}/docs)")
    print(f"mlsharp: data in {settings.data_dir}")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=5,
        **uvicorn_options(settings),  # read timeouts, connection limits, no proxy headers
    )
    return 0


def run_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``mlsharp config show``: the effective settings as JSON with secrets masked."""
    if getattr(args, "config_command", None) != "show":
        parser.error("usage: mlsharp config show [--config FILE]")
    settings = Settings.load(getattr(args, "config", None))
    print(json.dumps(settings.masked(), indent=2, sort_keys=True))
    return 0
