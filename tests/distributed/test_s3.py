"""Job files in S3-compatible storage (moto's S3 server): results uploaded by the worker,
downloaded through the API (streamed) or by a 307 to a presigned URL; the shared cache
keeps its files in the bucket too."""

from __future__ import annotations

import httpx
import pytest

from tests.distributed.conftest import jpeg_bytes, submit, wait_jobs

pytestmark = pytest.mark.slow


def _keys(moto_s3, prefix: str) -> list[str]:
    listed = moto_s3.client().list_objects_v2(Bucket=moto_s3.bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_results_in_s3_streamed_and_presigned(cluster, moto_s3):
    cluster.env.update(moto_s3.env())
    streaming = cluster.api()
    redirecting = cluster.api(env={"MLSHARP_S3_DOWNLOADS": "redirect"})
    cluster.worker()
    first = submit(streaming.url, (10, 20, 30))
    again = submit(redirecting.url, (10, 20, 30))  # same photo: a cache hit in the worker
    jobs = wait_jobs([streaming.url], [first, again])
    assert jobs[first]["status"] == jobs[again]["status"] == "succeeded"
    assert jobs[again]["cached"] is True
    assert _keys(moto_s3, f"t/jobs/{first}/") == [
        f"t/jobs/{first}/input.jpg",
        f"t/jobs/{first}/out/p10-20.ply",
        f"t/jobs/{first}/out/p10-20.preview.png",
    ]
    assert len(_keys(moto_s3, "t/cache/")) == 2  # one entry: the format and its thumbnail
    # No job files stay on local disks (API and worker): the bytes come from the bucket.
    staging = cluster.data_dir / "s3-staging" / "files"
    assert staging.is_dir() and [p for p in staging.rglob("*") if p.is_file()] == []

    streamed = httpx.get(f"{streaming.url}/v1/jobs/{first}/result?format=ply", timeout=30)
    assert streamed.status_code == 200
    assert streamed.content.startswith(b"ply\n")
    assert streamed.headers["content-length"] == str(len(streamed.content))
    assert 'filename="p10-20.ply"' in streamed.headers["content-disposition"]

    redirect = httpx.get(f"{redirecting.url}/v1/jobs/{again}/result?format=ply", timeout=30)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(moto_s3.url) and "Signature" in location
    presigned = httpx.get(location, timeout=30)
    assert presigned.status_code == 200
    assert presigned.content == streamed.content  # the cached copy of the same scene

    # An API-only instance answers a repeat photo from the shared cache at submission,
    # with the model id its workers announced in Redis.
    files = {"file": ("p10-20.jpg", jpeg_bytes(color=(10, 20, 30)), "image/jpeg")}
    third = httpx.post(f"{redirecting.url}/v1/jobs", files=files, timeout=30).json()
    assert (third["status"], third["cached"]) == ("succeeded", True)
    result = httpx.get(f"{streaming.url}/v1/jobs/{third['id']}/result?format=ply", timeout=30)
    assert result.content == streamed.content

    assert httpx.delete(f"{streaming.url}/v1/jobs/{first}").status_code == 204
    assert _keys(moto_s3, f"t/jobs/{first}/") == []
    gone = httpx.get(f"{redirecting.url}/v1/jobs/{first}/result?format=ply")
    assert gone.status_code == 404
