"""Fixtures for the scale-out tests: real servers on free 127.0.0.1 ports.

* ``redis_server`` (tests/conftest.py): Debian's ``redis-server`` (no persistence),
  stoppable and restartable on the same port (Redis-down tests). Missing binary: the
  tests skip with the reason, except under ``CI=true`` where they fail (see .ci/run).
* ``moto_s3``: ``moto_server`` (``moto[server]``), a real S3 HTTP endpoint.
* ``cluster``: starts ``mlsharp serve --queue`` and ``mlsharp worker`` child processes
  sharing one data directory; everything is killed at teardown.
* ``webhook_receiver``: a local HTTP server recording every POST.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import RedisServer, missing, wait_port
from tests.service.conftest import free_port, jpeg_bytes

__all__ = ["RedisServer", "free_port", "jpeg_bytes"]

MOTO_SERVER = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")


@dataclass
class MotoS3:
    """A moto S3 endpoint and the settings pointing at one bucket on it."""

    url: str
    bucket: str = "mlsharp-test"

    def env(self) -> dict[str, str]:
        return {
            "MLSHARP_STORAGE": "s3",
            "MLSHARP_S3_ENDPOINT_URL": self.url,
            "MLSHARP_S3_BUCKET": self.bucket,
            "MLSHARP_S3_REGION": "us-east-1",
            "MLSHARP_S3_ACCESS_KEY_ID": "testing",
            "MLSHARP_S3_SECRET_ACCESS_KEY": "testing",
            "MLSHARP_S3_PREFIX": "t/",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """``moto_server`` on a free port with an empty bucket."""
    if not Path(MOTO_SERVER).exists():
        missing("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        wait_port(port, 60)
        s3 = MotoS3(f"http://127.0.0.1:{port}")
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Proc:
    """One ``mlsharp`` child process and its log file."""

    process: subprocess.Popen
    log_path: Path
    url: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@dataclass
class Cluster:
    """API instances and workers sharing one queue and data directory."""

    tmp_path: Path
    checkpoint: Path
    queue_url: str
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.tmp_path / "shared-data"

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSHARP_")}
        env.update(
            MLSHARP_CACHE=str(self.tmp_path / "ckpt-cache"),
            MLSHARP_QUEUE=self.queue_url,
            MLSHARP_DATA_DIR=str(self.data_dir),
            MLSHARP_PRESET="tiny",
            MLSHARP_CHECKPOINT=str(self.checkpoint),
            MLSHARP_DEVICE="cpu",
            MLSHARP_OFFLINE="true",
            MLSHARP_QUEUE_HEARTBEAT_SECONDS="2",
            MLSHARP_WEBHOOK_ALLOW_PRIVATE="true",
            MLSHARP_WEBHOOK_BACKOFF_SECONDS="0.2",
            OMP_NUM_THREADS="1",
        )
        env.update(self.env)
        env.update(extra or {})
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None) -> Proc:
        log_path = self.tmp_path / f"{name}-{len(self.procs)}.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "mlsharp", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(env),
            )
        proc = Proc(process, log_path)
        self.procs.append(proc)
        return proc

    def api(self, *extra: str, env: dict[str, str] | None = None, port: int | None = None) -> Proc:
        """Start ``mlsharp serve`` (API only) and wait until it answers."""
        port = port or free_port()
        proc = self._spawn(
            "api", ["serve", "--host", "127.0.0.1", "--port", str(port), *extra], env
        )
        proc.url = f"http://127.0.0.1:{port}"
        wait_http(proc, f"{proc.url}/v1/health")
        return proc

    def worker(self, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
        """Start ``mlsharp worker``; with ``wait``, until it consumes the queue."""
        proc = self._spawn("worker", ["worker", *extra], env)
        if wait:
            wait_log(proc, "consuming jobs from the queue")
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.process.poll() is None:
                proc.process.kill()
                proc.process.wait(10)


def wait_http(proc: Proc, url: str, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200 (or the process dies: its log is shown)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        if proc.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up:\n{proc.log()}")
        time.sleep(0.1)


def wait_log(proc: Proc, text: str, timeout: float = 60) -> None:
    """Wait until ``text`` appears in the process's log."""
    deadline = time.monotonic() + timeout
    while text not in proc.log():
        if proc.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} not logged:\n{proc.log()}")
        time.sleep(0.1)


def running_and_other(workers: list[Proc], job_id: str, timeout: float = 30) -> tuple[Proc, Proc]:
    """Of two workers: (the one that started run 1 of ``job_id``, the other one)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = next((w for w in workers if f"job {job_id}: run 1 " in w.log()), None)
        if busy is not None:
            return busy, workers[1 - workers.index(busy)]
        if time.monotonic() > deadline:
            raise AssertionError(f"no worker started job {job_id}")
        time.sleep(0.01)


@pytest.fixture()
def cluster(tmp_path: Path, tiny_checkpoint: Path, redis_server: RedisServer) -> Iterator[Cluster]:
    """Factory of API and worker processes on one Redis; all killed at teardown."""
    running = Cluster(tmp_path, tiny_checkpoint, redis_server.url)
    yield running
    running.close()


@dataclass
class Receiver:
    """Requests received by the local webhook endpoint."""

    url: str
    received: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict]:
        with self.lock:
            return [r["body"] for r in self.received]


@pytest.fixture()
def webhook_receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 answering 200 to every POST and recording it."""
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with receiver.lock:
                receiver.received.append({"headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


def submit(url: str, color: tuple[int, int, int], **kwargs: Any) -> str:
    """POST one small JPEG to ``url``; returns the job id."""
    files = {"file": (f"p{color[0]}-{color[1]}.jpg", jpeg_bytes(color=color), "image/jpeg")}
    response = httpx.post(f"{url}/v1/jobs", files=files, timeout=30, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_jobs(urls: list[str], ids: list[str], timeout: float = 120) -> dict[str, dict]:
    """Poll (round-robin over ``urls``) until every job is finished; their JSON."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict] = {}
    turn = 0
    while len(done) < len(ids):
        for job_id in ids:
            if job_id in done:
                continue
            turn += 1
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{urls[turn % len(urls)]}/v1/jobs/{job_id}", timeout=10)
                if response.status_code == 200:
                    body = response.json()
                    if body["status"] in ("succeeded", "failed", "canceled"):
                        done[job_id] = body
        if time.monotonic() > deadline:
            missing = [i for i in ids if i not in done]
            raise AssertionError(f"{len(missing)} job(s) unfinished after {timeout}s: {missing}")
        time.sleep(0.1)
    return done


def job_record(queue_url: str, job_id: str) -> Any:
    """The job's record as stored in Redis (attempts included)."""
    import redis

    from mlsharp.service.jobs.redis import RedisJobStore

    client = redis.Redis.from_url(queue_url)
    try:
        job = RedisJobStore(client, "mlsharp").get(job_id)
        assert job is not None, f"no record of {job_id}"
        return job
    finally:
        client.close()


def wait_webhooks_settled(queue_url: str, timeout: float = 30) -> int:
    """Poll Redis until no event waits in the outbox and no webhook delivery is pending;
    assert each delivery was sent exactly once (one attempt); returns how many deliveries
    there are.

    Call it once the jobs are finished: their outbox entries were committed with their
    final state, so no event can appear later.
    """
    import redis

    client = redis.Redis.from_url(queue_url)
    try:
        deadline = time.monotonic() + timeout
        while client.zcard("mlsharp:outbox") or client.zcard("mlsharp:wh:due"):
            assert time.monotonic() < deadline, "webhook deliveries still pending"
            time.sleep(0.05)
        deliveries = list(client.scan_iter("mlsharp:wh:delivery:*", count=1000))
        attempts = {key: client.llen(key) for key in client.scan_iter("mlsharp:wh:attempts:*")}
        assert len(attempts) == len(deliveries), (attempts, deliveries)
        assert set(attempts.values()) <= {1}, attempts
        return len(deliveries)
    finally:
        client.close()


def requeue_all_in_flight(queue_url: str, heartbeat_seconds: float = 2.0) -> None:
    """Run the broker's requeue maintenance as a process whose clock is ahead: every
    worker looks dead, so their fetched messages go back to the queue. This is what the
    first worker back after a long Redis outage does, or one with a skewed clock."""
    import redis
    from dramatiq.brokers.redis import RedisBroker

    client = redis.Redis.from_url(queue_url)
    try:
        broker = RedisBroker(client=client, namespace="mlsharp:queue")
        ahead_ms = int((time.time() + 10 * heartbeat_seconds) * 1000)
        args = ["qsize", ahead_ms, "jobs", "test-clock-ahead", int(heartbeat_seconds * 1000)]
        args += [7 * 86400000, 1, 100]  # dead message TTL, do maintenance, unpack size
        broker.scripts["dispatch"](args=args, keys=[broker.namespace])
    finally:
        client.close()
