"""The browser-side parts: the dashboard page (`/dashboard/<site>`) and the tracker script
(`/js/script.js`).

Both are bundles that `make setup` builds from `web/` (npm ci + esbuild) into a git-ignored
folder; these routes only serve files. The dashboard page holds no data and no secret: it reads
the public Stats API and realtime endpoint with the key in its URL fragment, so its numbers are
the API's and it can show nothing that key could not read.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

DEFAULT_DIST: Final = Path(__file__).resolve().parent.parent / "web" / "dist"
ASSETS: Final = frozenset({"dashboard.js", "dashboard.css"})
# The page may talk to its own origin only; it embeds no third-party code at run time.
DASHBOARD_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/assets/dashboard.css?v={version}">
</head>
<body>
<div id="app" data-site="{site}"></div>
<script src="/assets/dashboard.js?v={version}"></script>
</body>
</html>
"""


def _missing(name: str) -> Response:
    return JSONResponse(
        {"error": f"{name} is not built: run `make setup` (builds web/ into the bundle folder)"},
        status_code=503,
    )


def web_routes(dist_dir: Path | None, dashboard: bool, tracker: bool) -> list[Route]:
    """Routes for the dashboard (api role) and the tracker (ingest and api roles)."""
    dist = dist_dir or DEFAULT_DIST

    def version() -> str:
        # Bundle mtime as a cache buster, so a rebuilt bundle is never served stale.
        try:
            return str(int((dist / "dashboard.js").stat().st_mtime))
        except OSError:
            return "0"

    async def page(request: Request) -> Response:
        if not (dist / "dashboard.js").is_file():
            return _missing("the dashboard")
        site = str(request.path_params.get("site", ""))[:253]
        title = f"{site} · rollup" if site else "rollup dashboard"
        body = _PAGE.format(
            title=html.escape(title), site=html.escape(site, quote=True), version=version()
        )
        return HTMLResponse(body, headers=DASHBOARD_HEADERS)

    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        path = dist / name
        if name not in ASSETS:
            return JSONResponse({"error": "not found"}, status_code=404)
        if not path.is_file():
            return _missing(name)
        # Versioned URLs (?v=mtime): a long cache lifetime is safe.
        return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000"})

    async def script(request: Request) -> Response:
        path = dist / "script.js"
        if not path.is_file():
            return _missing("the tracker script")
        # Customers' pages load it on every view: cacheable, but not for so long that an
        # update takes days to reach them.
        return FileResponse(
            path,
            media_type="application/javascript",
            headers={"Cache-Control": "public, max-age=3600", "Access-Control-Allow-Origin": "*"},
        )

    routes: list[Route] = []
    if tracker:
        routes.append(Route("/js/script.js", script, methods=["GET", "HEAD"]))
    if dashboard:
        routes += [
            Route("/dashboard", page, methods=["GET", "HEAD"]),
            Route("/dashboard/{site}", page, methods=["GET", "HEAD"]),
            Route("/assets/{name}", asset, methods=["GET", "HEAD"]),
        ]
    return routes
