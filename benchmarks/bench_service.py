"""Request overhead of the REST service, over real HTTP on 127.0.0.1.

    python benchmarks/bench_service.py [--checkpoint CKPT] [--preset tiny] [--jobs 30]

Two servers run in turn (uvicorn in a thread, the data directory in a temp folder):

1. API only (``workers=0``): time from sending ``POST /v1/jobs`` to the ``202`` answer,
   i.e. upload + decode + validation + SQLite write (submit -> queued), and
   ``GET /v1/jobs/{id}`` latency.
2. One worker: submit -> the event stream's final ``end`` event, end to end, with distinct
   photos so the cache never answers; then the same photo again (a cache hit).

Without ``--checkpoint`` a random tiny checkpoint is written to the temp folder. Prints a
Markdown table (p50 / p95 / max in milliseconds) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "parity" / "images" / "astronaut.jpg"


def photo_variant(index: int) -> bytes:
    """The test photo with a marked 16x16 block, so every upload has its own cache key."""
    image = Image.open(PHOTO).convert("RGB")
    x, y = 16 * (index % 32), 16 * ((index // 32) % 32)
    color = ((index * 37) % 256, (index * 91) % 256, (index * 13 + 128) % 256)
    image.paste(color, (x, y, x + 16, y + 16))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@contextmanager
def running_server(**settings_values):
    """uvicorn serving create_app(Settings(**values)) on a free loopback port."""
    import uvicorn

    from mlsharp.config import Settings
    from mlsharp.service.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Settings(**settings_values))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    if settings_values.get("workers", 1) > 0:
        app.state.mlsharp.model.ready.wait(600)
    try:
        yield httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
    finally:
        server.should_exit = True
        thread.join(30)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p95 and max of ``samples`` (seconds) in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1e3, p95 * 1e3, ordered[-1] * 1e3


def submit(client: httpx.Client, data: bytes) -> tuple[str, float]:
    start = time.perf_counter()
    response = client.post("/v1/jobs", files={"file": ("photo.jpg", data, "image/jpeg")})
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return response.json()["id"], elapsed


def follow_to_end(client: httpx.Client, job_id: str) -> None:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as events:
        for line in events.iter_lines():
            if line == "event: end":
                return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint (default: a random tiny one)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from mlsharp.commands.random_checkpoint import write_random_checkpoint

            checkpoint = str(write_random_checkpoint("tiny", Path(tmp) / "tiny.pt", seed=0))
        common = dict(
            preset=args.preset,
            checkpoint=checkpoint,
            device=args.device,
            offline=True,
            max_queue=10_000,
        )
        photos = [photo_variant(i) for i in range(args.jobs)]
        rows = []
        with running_server(workers=0, data_dir=f"{tmp}/api", **common) as client:
            submit(client, photos[0])  # warm-up
            queued, status = [], []
            for data in photos:
                job_id, seconds = submit(client, data)
                queued.append(seconds)
                start = time.perf_counter()
                client.get(f"/v1/jobs/{job_id}").raise_for_status()
                status.append(time.perf_counter() - start)
            rows.append(("POST /v1/jobs -> 202 queued (512² JPEG)", percentiles(queued)))
            rows.append(("GET /v1/jobs/{id}", percentiles(status)))
        with running_server(workers=1, data_dir=f"{tmp}/e2e", **common) as client:
            job_id, _ = submit(client, photo_variant(10_000))  # warm-up
            follow_to_end(client, job_id)
            end_to_end, hits = [], []
            for data in photos:
                start = time.perf_counter()
                job_id, _ = submit(client, data)
                follow_to_end(client, job_id)
                end_to_end.append(time.perf_counter() - start)
                start = time.perf_counter()
                job_id, _ = submit(client, data)  # same pixels: answered from the cache
                hits.append(time.perf_counter() - start)
            rows.append((f"submit -> SSE end, {args.preset} model", percentiles(end_to_end)))
            rows.append(("submit of a cached photo -> 202 succeeded", percentiles(hits)))

    print(
        f"\n{time.strftime('%Y-%m-%d')} — {platform.machine()}, {platform.system()}, "
        f"Python {sys.version.split()[0]}, {args.jobs} jobs each, device {args.device}\n"
    )
    print("| measurement | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|")
    for name, (p50, p95, worst) in rows:
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {worst:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
