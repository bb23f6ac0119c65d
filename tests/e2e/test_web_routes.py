"""The page's HTTP side: routes, caching headers, CSP, gzip, 404s, /v1/info, /docs, packaging.

A real uvicorn server (API-only node: no model) on a free port; no browser needed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mlsharp import splat
from tests.conftest import REPO
from tests.service.conftest import run_live_server

STATIC = REPO / "src" / "mlsharp" / "web" / "static"
ERROR_FIELDS = {"error", "message", "status_code", "path", "timestamp", "request_id"}


@pytest.fixture()
def site(tmp_path: Path, tiny_checkpoint: Path):
    with run_live_server(tmp_path, tiny_checkpoint, workers=0) as server:
        yield server


def linked_assets(html: str) -> dict[str, str]:
    """name -> versioned URL of every /static/ asset the page links."""
    found = re.findall(r'"(/static/([\w./-]+)\?v=[0-9a-f]{12})"', html)
    return {name: url for url, name in found}


def test_page_is_served_at_root_with_csp_and_revalidation(site) -> None:
    page = site.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "'wasm-unsafe-eval'" in csp
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    again = site.client.get("/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_assets_are_versioned_immutable_and_revalidated_without_version(site) -> None:
    html = site.client.get("/").text
    assets = linked_assets(html)
    assert {"app.js", "style.css", "viewer.js", "icon.svg"} <= set(assets)
    for name, url in assets.items():
        versioned = site.client.get(url)
        assert versioned.status_code == 200, name
        assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert versioned.content == (STATIC / name).read_bytes()
        plain = site.client.get(f"/static/{name}")
        assert plain.headers["cache-control"] == "no-cache"
        assert plain.headers["etag"] == versioned.headers["etag"]
        cached = site.client.get(
            f"/static/{name}", headers={"If-None-Match": plain.headers["etag"]}
        )
        assert cached.status_code == 304
    stale = site.client.get("/static/app.js?v=000000000000")
    assert stale.headers["cache-control"] == "no-cache"


def test_modules_are_served_as_javascript_and_gzipped_on_request(site) -> None:
    raw = (STATIC / "viewer.js").read_bytes()
    with site.client.stream(
        "GET", "/static/viewer.js", headers={"Accept-Encoding": "gzip"}
    ) as response:
        body = b"".join(response.iter_raw())
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == raw
    assert len(body) < len(raw) / 2
    gzip_etag = response.headers["etag"]
    identity = site.client.get("/static/viewer.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in identity.headers
    assert identity.content == raw
    # The two codings are different representations: different strong ETags.
    assert identity.headers["etag"] != gzip_etag
    crossed = {"Accept-Encoding": "identity", "If-None-Match": gzip_etag}
    assert site.client.get("/static/viewer.js", headers=crossed).status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/static/nope.js", "/static/", "/static/%2e%2e/__init__.py", "/static/%2e%2e/index.html"],
)
def test_unknown_static_paths_are_404_in_the_error_schema(site, path: str) -> None:
    response = site.client.get(path)
    assert response.status_code == 404
    body = response.json()
    assert set(body) == ERROR_FIELDS
    assert body["error"] == "not_found"


def test_docs_are_swagger_ui_from_package_data_under_a_strict_csp(site) -> None:
    docs = site.client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"] == "text/html; charset=utf-8"
    assert "https://" not in docs.text and "cdn" not in docs.text.lower()
    assets = linked_assets(docs.text)
    assert {"swagger/swagger-ui-bundle.js", "swagger/swagger-ui.css", "icon.svg"} <= set(assets)
    for name, url in assets.items():
        answer = site.client.get(url)
        assert answer.status_code == 200 and answer.content == (STATIC / name).read_bytes()
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    # The one inline script (Swagger UI's set-up) is allowed by its hash, nothing else.
    csp = docs.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    assert len(scripts) == 1 and "'unsafe-inline'" not in csp
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}'" in csp
    assert "connect-src 'self'" in csp and '"validatorUrl": null' in scripts[0]
    assert (
        site.client.get("/docs", headers={"If-None-Match": docs.headers["etag"]}).status_code == 304
    )
    redoc = site.client.get("/redoc", follow_redirects=False)
    assert redoc.status_code == 307 and redoc.headers["location"] == "/docs"
    assert site.client.get("/docs/oauth2-redirect").status_code == 404  # no OAuth2 here


def test_page_does_not_shadow_the_api_or_docs(site) -> None:
    assert site.client.get("/v1/health").json()["status"] == "ok"
    assert site.client.get("/docs").status_code == 200
    assert site.client.get("/metrics").status_code == 200
    paths = site.client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    missing = site.client.get("/v1/nothing-here")
    assert missing.status_code == 404 and set(missing.json()) == ERROR_FIELDS


def test_info_lists_formats_defaults_limits_and_auth(site) -> None:
    info = site.client.get("/v1/info").json()
    assert [f["name"] for f in info["formats"]] == list(splat.FORMATS)
    by_name = {f["name"]: f for f in info["formats"]}
    assert by_name["ply"] == {
        "name": "ply",
        "suffix": ".ply",
        "media_type": "application/x-ply",
        "scene": True,
        "frame": "opencv",
        "summary": "Apple ml-sharp's reference layout (default)",
        "viewer": True,
        "bytes_per_splat": 56.0,
    }
    smallest = min((f for f in info["formats"] if f["viewer"]), key=lambda f: f["bytes_per_splat"])
    assert smallest["name"] == "sog"  # what the page asks for and shows
    for name, frame in splat.FRAME_FORMATS.items():
        assert by_name[name]["frame"] == frame
    for name in splat.DEPTH_FORMATS:
        assert by_name[name]["scene"] is False and by_name[name]["frame"] is None
    assert info["default_formats"] == list(site.settings.default_formats)
    assert info["auth_required"] is False
    assert info["max_upload_bytes"] == site.settings.max_upload_bytes


def test_info_says_when_a_key_is_needed(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with run_live_server(tmp_path, tiny_checkpoint, workers=0, api_keys=["k1"]) as server:
        assert server.client.get("/v1/info").json()["auth_required"] is True
        assert server.client.get("/").status_code == 200  # the page itself is public
    with run_live_server(
        tmp_path, tiny_checkpoint, workers=0, api_keys=["k1"], protect_health=True
    ) as server:
        refused = server.client.get("/v1/info")
        assert refused.status_code == 401 and set(refused.json()) == ERROR_FIELDS
        allowed = server.client.get("/v1/info", headers={"X-API-Key": "k1"})
        assert allowed.json()["auth_required"] is True


def test_bundle_ships_with_its_licences() -> None:
    bundle = (STATIC / "viewer.js").read_text(encoding="utf-8")
    banner = bundle.splitlines()[0]
    assert "three.js 0.187" in banner and "Spark 2.2" in banner
    for name in ("three.LICENSE", "spark.LICENSE", "fflate.LICENSE"):
        assert "MIT License" in (STATIC / name).read_text(encoding="utf-8")
    assert "https://cdn" not in bundle
    swagger = STATIC / "swagger"
    assert "Apache License" in (swagger / "swagger-ui.LICENSE").read_text(encoding="utf-8")
    assert "SmartBear" in (swagger / "swagger-ui.NOTICE").read_text(encoding="utf-8")
    assert "sourceMappingURL" not in (swagger / "swagger-ui.css").read_text(encoding="utf-8")


#: Files web/build.mjs writes (checked against a fresh build).
BUILT = [
    "viewer.js",
    "three.LICENSE",
    "spark.LICENSE",
    "fflate.LICENSE",
    "swagger/swagger-ui-bundle.js",
    "swagger/swagger-ui.css",
    "swagger/swagger-ui.LICENSE",
    "swagger/swagger-ui.NOTICE",
    "swagger/swagger-ui-bundle.js.LICENSE.txt",
]


@pytest.mark.skipif(
    shutil.which("node") is None or not (REPO / "web" / "node_modules").is_dir(),
    reason="needs node and `cd web && npm ci` to rebuild the viewer bundle",
)
def test_committed_bundle_matches_a_fresh_build(tmp_path: Path) -> None:
    env = {**os.environ, "MLSHARP_WEB_OUT": str(tmp_path)}
    subprocess.run(["node", "build.mjs"], cwd=REPO / "web", env=env, check=True, timeout=300)
    built = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert built == set(BUILT)
    for name in BUILT:
        assert (tmp_path / name).read_bytes() == (STATIC / name).read_bytes(), (
            f"{name} is stale: run `cd web && npm ci && npm run build`"
        )


@pytest.mark.slow
def test_wheel_contains_the_page(tmp_path: Path) -> None:
    # Build from a copy so the shared working tree gets no build/ or egg-info folders.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps"]
    command += ["--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run(command, check=True, timeout=600, cwd=tmp_path)
    wheel = next(tmp_path.glob("mlsharp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert "swagger/swagger-ui-bundle.js" in packaged
    assert "mlsharp/web/index.html" in names
    assert {f"mlsharp/web/static/{n}" for n in packaged} <= names
    assert "mlsharp/service/web.py" in names
