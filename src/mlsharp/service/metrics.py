"""Prometheus metrics of one service instance (served at ``GET /metrics``).

Each app gets its own registry, so several apps in one process (tests) do not clash.
Counters and histograms are updated where things happen; the gauges that describe the
current state (queue depth, running jobs, cache size, device memory) are read at scrape
time from their owners through ``StateProbe`` callables.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("mlsharp.service")

# The *_created series double the output for no use here (a process-wide switch).
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


@dataclass
class StateProbe:
    """Callables returning the current values behind the state gauges.

    ``job_counts`` and ``cache`` describe the whole cluster in the scale-out mode (read
    from Redis); ``None`` leaves those gauges out (``mlsharp worker``'s own endpoint).
    """

    job_counts: Callable[[], dict[str, int]] | None
    cache: Callable[[], dict[str, float]] | None
    device_memory: Callable[[], dict[str, float]]


class _StateCollector(Collector):
    """The scrape-time gauges. A probe that fails (Redis away) leaves its gauges out of
    this scrape and counts the failure; the rest of ``/metrics`` is still served."""

    def __init__(self, probe: StateProbe) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._failures = {"jobs": 0, "cache": 0, "device_memory": 0}

    def _read(self, name: str, probe: Callable[[], dict] | None) -> dict | None:
        if probe is None:
            return None
        try:
            return probe()
        except Exception as error:  # never fail the whole scrape for one source
            with self._lock:
                self._failures[name] += 1
            log.debug("metrics: the %s gauges are left out of this scrape (%s)", name, error)
            return None

    def collect(self) -> Iterator[Metric]:
        counts = self._read("jobs", self._probe.job_counts)
        if counts is not None:
            yield from _job_gauges(counts)
        cache = self._read("cache", self._probe.cache)
        if cache is not None:
            yield from _cache_gauges(cache)
        memory = self._read("device_memory", self._probe.device_memory)
        if memory is not None:
            family = GaugeMetricFamily(
                "mlsharp_device_memory_bytes", "Memory of the inference device", labels=["kind"]
            )
            for kind, value in sorted(memory.items()):
                family.add_metric([kind], value)
            yield family
        failures = CounterMetricFamily(
            "mlsharp_metrics_probe_failures",
            "Scrapes that left out gauges because their source (jobs, cache, device_memory) "
            "could not be read, e.g. Redis away",
            labels=["probe"],
        )
        with self._lock:
            for name, count in sorted(self._failures.items()):
                failures.add_metric([name], count)
        yield failures


def _job_gauges(counts: dict[str, int]) -> Iterator[GaugeMetricFamily]:
    yield GaugeMetricFamily(
        "mlsharp_queue_depth", "Jobs waiting in the queue", value=counts.get("queued", 0)
    )
    yield GaugeMetricFamily(
        "mlsharp_jobs_running", "Jobs being processed now", value=counts.get("running", 0)
    )
    jobs = GaugeMetricFamily("mlsharp_jobs", "Jobs on record by status", labels=["status"])
    for status, n in sorted(counts.items()):
        jobs.add_metric([status], n)
    yield jobs


def _cache_gauges(cache: dict[str, float]) -> Iterator[GaugeMetricFamily]:
    for name, help_text in (
        ("entries", "Entries in the result cache"),
        ("bytes", "Bytes on disk used by the result cache"),
        ("max_bytes", "Disk budget of the result cache"),
        ("hits", "Result cache hits since the cache was created or cleared"),
        ("misses", "Result cache misses since the cache was created or cleared"),
    ):
        yield GaugeMetricFamily(f"mlsharp_cache_{name}", help_text, value=cache.get(name, 0))


class Metrics:
    """The service's metrics registry and its instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlsharp_http_requests",
            "HTTP requests by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlsharp_http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "mlsharp_stage_duration_seconds",
            "Seconds per job stage (decode, preprocess, inference, postprocess, write)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "mlsharp_jobs_finished",
            "Jobs finished by final status",
            ["status"],
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "mlsharp_cache_lookups",
            "Result cache lookups by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "mlsharp_webhook_attempts",
            "Webhook delivery attempts by event and outcome",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.memory_releases = Counter(
            "mlsharp_memory_releases",
            "Releases of cached device memory by reason (idle, threshold, oom)",
            ["reason"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mlsharp_inference_batch_size",
            "Photos per network forward (jobs running at once share a forward)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        # The job runner's and the queue's figures (this process's runs).
        self.job_seconds = Histogram(
            "mlsharp_worker_job_duration_seconds",
            "Wall time of one run of a job on this worker, by outcome",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
            registry=self.registry,
        )
        self.retries = Counter(
            "mlsharp_worker_job_retries",
            "Runs that failed and were queued again",
            registry=self.registry,
        )
        self.fenced = Counter(
            "mlsharp_worker_runs_fenced",
            "Runs discarded because a newer run of the same job took over",
            registry=self.registry,
        )
        self.skipped = Counter(
            "mlsharp_worker_deliveries_skipped",
            "Deliveries not run: the job ended (finished) or another live run holds it (busy)",
            ["reason"],
            registry=self.registry,
        )
        self.reconciled = Counter(
            "mlsharp_queue_reconciled",
            "Jobs without a queue message found by this worker's sweeps: resent or failed",
            ["action"],
            registry=self.registry,
        )
        self.handed_back = Counter(
            "mlsharp_worker_jobs_handed_back",
            "Jobs put back in the queue because the drain time ran out on shutdown",
            registry=self.registry,
        )
        self.probe: StateProbe | None = None

    def attach(self, probe: StateProbe) -> None:
        """Register the scrape-time gauges read from ``probe``."""
        self.probe = probe
        self.registry.register(_StateCollector(probe))

    def drop_cluster_gauges(self) -> None:
        """Leave the job and cache gauges out (the process's own figures remain).

        ``mlsharp worker`` calls it: in the scale-out mode those gauges are cluster-wide
        figures read from Redis, exported by the API instances; summing them over every
        scraped worker too would count the same queue many times.
        """
        if self.probe is not None:
            self.probe.job_counts = None
            self.probe.cache = None

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def observe_stages(self, timings: dict[str, float]) -> None:
        """Record the per-stage seconds of one finished job."""
        for stage, seconds in timings.items():
            if stage != "total":
                self.stage_seconds.labels(stage).observe(seconds)

    def render(self) -> bytes:
        """The exposition text for ``GET /metrics``."""
        return generate_latest(self.registry)
