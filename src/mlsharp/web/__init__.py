"""The web page of ``mlsharp serve`` (package data, no Python logic).

``index.html`` is the page served at ``/``; everything in ``static/`` is served under
``/static/``: the page's scripts and style sheet, and ``viewer.js``, the splat viewer
bundle (Spark + three.js) built from ``web/`` at the repository root by ``npm run build``
and committed, so a plain ``pip install`` serves a working page with no Node and no CDN.
The HTTP side (caching, Content-Security-Policy) lives in :mod:`mlsharp.service.web`.
"""
