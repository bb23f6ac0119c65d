"""Scale-out throughput and redelivery time, with real processes on 127.0.0.1.

    python benchmarks/bench_cluster.py [--jobs 30] [--heartbeat 2]

Starts a redis-server (Debian's, on a free port), one API instance (``mlsharp serve
--queue``) and ``mlsharp worker`` processes with a random tiny checkpoint, all on this
machine and sharing one data directory, the way tests/distributed does. Then:

1. Throughput: with 1 worker, then 2 (each ``OMP_NUM_THREADS=1``: one core per worker),
   submit ``--jobs`` distinct photos at once (cache off) and time submit -> the last job
   finished. Workers are started and have loaded the model before the clock starts.
2. Redelivery: 2 workers that wait 3 s before each run (the hidden ``--debug-job-delay``);
   one job; ``kill -9`` the worker running it; time until the other worker starts run 2
   and until the job has succeeded. The heartbeat timeout is ``--heartbeat`` seconds
   (the service's default is 30).

Needs redis-server and ``pip install "mlsharp[distributed]"``. Prints Markdown for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.distributed.conftest import (  # noqa: E402  (needs the repository on the path)
    Cluster,
    RedisServer,
    running_and_other,
    submit,
    wait_jobs,
    wait_log,
)
from tests.service.conftest import free_port  # noqa: E402


def throughput(tmp: Path, checkpoint: Path, workers: int, jobs: int, offset: int) -> float:
    """Jobs per second with ``workers`` worker processes, ``jobs`` distinct photos."""
    redis = RedisServer(free_port(), tmp)
    redis.start()
    cluster = Cluster(tmp / f"t{workers}", checkpoint, redis.url)
    cluster.tmp_path.mkdir()
    cluster.env.update(MLSHARP_CACHE_ENABLED="false", MLSHARP_PREVIEWS="false")
    try:
        api = cluster.api()
        for _ in range(workers):
            cluster.worker()
        start = time.perf_counter()
        ids = [submit(api.url, (offset + i, (7 * i) % 256, 99)) for i in range(jobs)]
        done = wait_jobs([api.url], ids, timeout=600)
        elapsed = time.perf_counter() - start
        failed = [j for j in done.values() if j["status"] != "succeeded"]
        if failed:
            raise SystemExit(f"{len(failed)} job(s) failed: {failed[0]}")
        return jobs / elapsed
    finally:
        cluster.close()
        redis.stop()


def redelivery(tmp: Path, checkpoint: Path, heartbeat: float) -> tuple[float, float]:
    """(seconds from kill -9 to run 2 starting, seconds from kill -9 to success)."""
    redis = RedisServer(free_port(), tmp)
    redis.start()
    cluster = Cluster(tmp / "redelivery", checkpoint, redis.url)
    cluster.tmp_path.mkdir()
    cluster.env.update(MLSHARP_QUEUE_HEARTBEAT_SECONDS=str(heartbeat))
    try:
        api = cluster.api()
        workers = [cluster.worker("--debug-job-delay", "3") for _ in range(2)]
        job_id = submit(api.url, (1, 2, 3))
        busy, other = running_and_other(workers, job_id, timeout=60)
        busy.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_log(other, f"job {job_id}: run 2 ", timeout=10 * heartbeat + 60)
        restarted = time.monotonic() - killed
        job = wait_jobs([api.url], [job_id], timeout=120)[job_id]
        if job["status"] != "succeeded":
            raise SystemExit(f"the job ended {job['status']}: {job.get('error')}")
        return restarted, time.monotonic() - killed
    finally:
        cluster.close()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="photos per throughput run")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="heartbeat timeout, s")
    args = parser.parse_args()
    from mlsharp.commands.random_checkpoint import write_random_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        checkpoint = write_random_checkpoint("tiny", tmp / "tiny.pt")
        rates = {n: throughput(tmp, checkpoint, n, args.jobs, 10 * n) for n in (1, 2)}
        restarted, finished = redelivery(tmp, checkpoint, args.heartbeat)
    print(
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {platform.python_version()}, "
        f"tiny model, {args.jobs} distinct photos, cache off, OMP_NUM_THREADS=1 per worker\n"
    )
    print("| workers | jobs/s | vs 1 worker |\n|---|---|---|")
    for n, rate in rates.items():
        print(f"| {n} | {rate:.2f} | {rate / rates[1]:.2f}x |")
    print(
        f"\nkill -9 of the worker running a job (heartbeat timeout {args.heartbeat:g} s): "
        f"run 2 started on the other worker after {restarted:.1f} s, "
        f"the job succeeded {finished:.1f} s after the kill"
    )


if __name__ == "__main__":
    main()
