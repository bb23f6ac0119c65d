"""Serve the web page (``/``), the API docs (``/docs``) and their assets under ``/static/``.

The files come from :mod:`mlsharp.web` through :mod:`importlib.resources` (no Node, no
CDN, works offline) and are read once, on the first request. Caching:

* every response carries a strong ``ETag`` (the content's SHA-256) and answers a matching
  ``If-None-Match`` with ``304``;
* the page links its assets as ``/static/NAME?v=HASH``; a request whose ``v`` matches the
  current content is cacheable for a year (``immutable``), anything else (the page itself,
  modules imported without ``v``) is ``no-cache``: revalidated on each use, cheaply by ETag.

Text assets are sent gzip-compressed to clients that accept it (the viewer bundle shrinks
from 3.1 MB to 1.0 MB). The page gets a Content-Security-Policy that allows only this
origin, plus ``blob:`` workers, ``blob:``/``data:`` images and WebAssembly compilation, which
the viewer (Spark) needs. Unknown paths under ``/static/`` are ``404`` in the API's error
schema.

``/docs`` is Swagger UI from the same package data (``static/swagger/``, copied from the
``swagger-ui-dist`` npm package by ``web/build.mjs``) instead of FastAPI's CDN default, so
it works offline too; its one inline script is allowed by hash in its own CSP. ``/redoc``
redirects there.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import re
import sys
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import RedirectResponse

from mlsharp.errors import NotFound

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

#: URL prefix of the page's assets (the package folder ``mlsharp/web/static``).
STATIC_PREFIX = "/static"

#: Content-Security-Policy of the page: same origin only; Spark runs its WebAssembly in
#: blob: workers and decodes textures from blob:/data: URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:",
        "connect-src 'self' blob: data:",
        "img-src 'self' blob: data:",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

#: Content-Security-Policy of ``/docs`` (``{script}``: the hash of its inline script).
#: Swagger UI's stylesheet uses data: images; it styles elements through the DOM, which
#: ``style-src 'self'`` allows. It only talks to this origin (no online validator).
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' {script}",
        "connect-src 'self'",
        "img-src 'self' data:",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
#: Swagger UI settings: no online validator badge (it would call validator.swagger.io).
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".LICENSE": "text/plain; charset=utf-8",
    ".NOTICE": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_COMPRESSIBLE = ("text/", "image/svg+xml", "application/json")
_IMMUTABLE = "public, max-age=31536000, immutable"
_PLACEHOLDER = re.compile(r"\{\{static:([A-Za-z0-9._/-]+)\}\}")


@dataclass
class Asset:
    """One file to serve: its bytes, media type and content hash (gzip made on demand)."""

    body: bytes
    media_type: str
    digest: str = field(init=False)
    _gzipped: bytes | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256(self.body).hexdigest()

    @property
    def version(self) -> str:
        """Short content hash used in ``?v=`` query strings."""
        return self.digest[:12]

    @property
    def etag(self) -> str:
        """Strong entity tag of the uncompressed content."""
        return f'"{self.digest[:32]}"'

    @property
    def compressible(self) -> bool:
        """Worth gzipping: text of more than a kilobyte."""
        return len(self.body) > 1024 and self.media_type.startswith(_COMPRESSIBLE)

    def gzipped(self) -> bytes:
        """The body gzip-compressed (deterministic: no timestamp), computed once."""
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=6, mtime=0)
            return self._gzipped


@dataclass
class Site:
    """The page and its assets, read from package data."""

    page: Asset
    assets: dict[str, Asset]


def _media_type(name: str) -> str:
    for suffix, media_type in _MEDIA_TYPES.items():
        if name.endswith(suffix):
            return media_type
    return "application/octet-stream"


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for entry in folder.iterdir():
        if entry.name.startswith((".", "__")):
            continue
        if entry.is_dir():
            files.update(_walk(entry, f"{prefix}{entry.name}/"))
        else:
            files[f"{prefix}{entry.name}"] = entry.read_bytes()
    return files


def load_site(package: str = "mlsharp.web") -> Site:
    """Read the page and its assets; the page's ``{{static:NAME}}`` become versioned URLs.

    Raises:
        NotFound: a placeholder names an asset that does not exist (a packaging error).
    """
    root = resources.files(package)
    assets = {name: Asset(body, _media_type(name)) for name, body in _walk(root / "static").items()}

    def url(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in assets:
            raise NotFound(f"the page links {name!r}, which is not in the package")
        return f"{STATIC_PREFIX}/{name}?v={assets[name].version}"

    html = (root / "index.html").read_text(encoding="utf-8")
    page = Asset(_PLACEHOLDER.sub(url, html).encode("utf-8"), _MEDIA_TYPES[".html"])
    return Site(page=page, assets=assets)


@functools.cache
def site() -> Site:
    """The packaged site, read on first use."""
    return load_site()


def _respond(request: Request, asset: Asset, cache_control: str, **extra: str) -> Response:
    headers = {"Cache-Control": cache_control, **_SECURITY_HEADERS, **extra}
    gzipped = asset.compressible and "gzip" in request.headers.get("accept-encoding", "").lower()
    # Each content coding is its own representation, so it gets its own strong ETag.
    etag = f'{asset.etag[:-1]}-gzip"' if gzipped else asset.etag
    headers["ETag"] = etag
    if asset.compressible:
        headers["Vary"] = "Accept-Encoding"
    offered = [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
    if etag in offered or f"W/{etag}" in offered:
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gzipped(), media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


router = APIRouter(include_in_schema=False)


@router.get("/")
def index(request: Request) -> Response:
    """The web page."""
    return _respond(
        request,
        site().page,
        "no-cache",
        **{"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"},
    )


def _static_url(name: str) -> str:
    """The versioned URL of packaged asset ``name`` (cached for a year by browsers).

    Raises:
        NotFound: the asset is not in the package (a packaging error).
    """
    asset = site().assets.get(name)
    if asset is None:
        raise NotFound(f"{name!r} is not in the package: run `cd web && npm run build`")
    return f"{STATIC_PREFIX}/{name}?v={asset.version}"


def _script_hash(script: str) -> str:
    """The CSP source that allows one inline script: ``'sha256-BASE64'``."""
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@functools.cache
def _docs_page(title: str, openapi_url: str) -> tuple[Asset, str]:
    """Swagger UI's page on the packaged files, and its CSP (built once per title and URL)."""
    body = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - Swagger UI",
        swagger_js_url=_static_url("swagger/swagger-ui-bundle.js"),
        swagger_css_url=_static_url("swagger/swagger-ui.css"),
        swagger_favicon_url=_static_url("icon.svg"),
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    ).body
    html = bytes(body).decode("utf-8")
    hashes = " ".join(_script_hash(script) for script in _INLINE_SCRIPT.findall(html))
    page = Asset(html.encode("utf-8"), _MEDIA_TYPES[".html"])
    return page, DOCS_CONTENT_SECURITY_POLICY.format(script=hashes)


@router.get("/docs")
def docs(request: Request) -> Response:
    """Swagger UI of the API, served from package data (works offline)."""
    page, csp = _docs_page(request.app.title, request.app.openapi_url or "/openapi.json")
    return _respond(
        request, page, "no-cache", **{"Content-Security-Policy": csp, "X-Frame-Options": "DENY"}
    )


@router.get("/redoc")
def redoc() -> RedirectResponse:
    """The former ReDoc page: the API documentation is Swagger UI at ``/docs``."""
    return RedirectResponse("/docs", status_code=307)


@router.get(STATIC_PREFIX + "/{name:path}")
def static_file(name: str, request: Request) -> Response:
    """One asset of the page; immutable when asked for by its current ``?v=`` version."""
    asset = site().assets.get(name)
    if asset is None:
        raise NotFound(f"no static file {name!r}")
    versioned = request.query_params.get("v") == asset.version
    return _respond(request, asset, _IMMUTABLE if versioned else "no-cache")
