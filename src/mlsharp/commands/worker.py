"""``mlsharp worker``: run jobs from the Redis queue on one device (scale-out mode).

    settings ─► load the model once ─► wait for Redis (backoff) ─► consume, one job at a
    time ─► SIGTERM/SIGINT: finish the job in hand (up to --drain-seconds, then hand it
    back to the queue: queued again, the attempt not counted), hand prefetched messages
    back, exit 0

Redis going away later is not fatal either: the queue consumer and the heartbeat retry
with backoff and log once when the connection is lost and once when it is back.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from mlsharp.config import Settings
from mlsharp.errors import ConfigError

log = logging.getLogger("mlsharp.worker")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags > environment > config file > defaults; the queue URL is required."""
    flags = {
        name: getattr(args, name, None)
        for name in (
            *("queue", "data_dir", "checkpoint", "preset", "device", "offline", "log_format"),
            *("precision", "resolution", "backend", "backend_device", "int8_weights"),
        )
    }
    settings = Settings.load(getattr(args, "config", None), **flags)
    if not settings.queue:
        raise ConfigError(
            "mlsharp worker needs a queue: --queue redis://HOST:PORT/DB or $MLSHARP_QUEUE"
        )
    return settings


def run_worker(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    settings = settings_from_args(args)
    from mlsharp.commands.serve import check_runtime_options
    from mlsharp.service.logs import configure_logging
    from mlsharp.weights import resolve_checkpoint

    configure_logging(settings.log_format, settings.log_level)
    resolve_checkpoint(settings.checkpoint, download=not settings.offline, progress=True)
    check_runtime_options(settings)  # a bad option is a ConfigError (exit 2), not a failed load

    from mlsharp.errors import CheckpointError
    from mlsharp.service.backends import build_state
    from mlsharp.service.jobs.runner import JobRunner

    state = build_state(settings)
    state.load_model()  # once, before any job; a bad checkpoint ends here with one line
    if state.model.engine is None:
        state.close()
        raise CheckpointError(state.model.error or "the model could not be loaded")
    if args.metrics_port:
        # The cluster-wide job and cache gauges come from the API instances' /metrics.
        state.metrics.drop_cluster_gauges()
        _serve_metrics(state, args.metrics_port)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner = JobRunner(state, state.queue, threads=1, debug_delay=args.debug_job_delay)
    runner.start()
    queue = settings.masked()["queue"]  # without its password
    log.info(
        "worker ready: preset %s on %s, queue %s",
        settings.preset,
        state.model.engine.device,
        queue,
    )
    print(f"mlsharp: worker on {state.model.engine.device} consuming {queue}")
    stop.wait()
    runner.stop(timeout=args.drain_seconds)
    state.close()
    log.info("worker stopped")
    return 0


def _serve_metrics(state: Any, port: int) -> None:
    """Expose the worker's own figures (its runs, stage and run durations, retries,
    device memory) over HTTP."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr="0.0.0.0", registry=state.metrics.registry)
    except OSError as error:
        raise ConfigError(f"cannot serve metrics on port {port}: {error.strerror}") from None
    log.info("metrics on http://0.0.0.0:%d/metrics", port)
