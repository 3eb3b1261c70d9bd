"""The live web dashboard: ``/`` (its page) and ``/dashboard/...`` (its scripts and styles).

Plain HTML, CSS and ES modules packaged with the server (``entrypoints/static/dashboard/``,
listed in pyproject's package-data): no build step, no CDN, no request to another host. The
page reads the public REST API and follows ``/v2/realtime`` like any other client; the server
only hands out files, under a Content-Security-Policy that lets the page load nothing but
this server's own scripts and styles and talk to nothing but this server (docs/adr/0029).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from .operations import Operation, OperationRoute, Text
from .schemas.common import NoParameters

__all__ = ["ASSETS", "ASSETS_PATH", "CONTENT_SECURITY_POLICY", "DashboardFiles", "dashboard_routes"]

ASSETS: Final = Path(__file__).parent / "static" / "dashboard"
ASSETS_PATH: Final = "/dashboard"

# 'self' in connect-src covers ws:/wss: to the page's own host and port (CSP Level 3), which
# is where /v2/realtime is. No 'unsafe-inline' anywhere: the page has no inline script or
# style attribute, and builds every data-bearing node with textContent.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate (ETag / Last-Modified) on every load: a new server version's assets are
    # picked up at once, and an unchanged file costs a 304.
    "Cache-Control": "no-cache",
}

DASHBOARD: Final = Operation(
    "GET",
    "getDashboard",
    "The live web dashboard (an HTML page; its assets are under /dashboard/)",
    NoParameters,
    Text("text/html"),
    description="Top protocols with live TVL, filters, per-protocol history, chain and "
    "category breakdowns and, with an API key, the account's alert rules and firings. "
    "Served under a strict Content-Security-Policy. See docs/dashboard.md.",
)


class DashboardFiles(StaticFiles):
    """The dashboard's assets, with the page's security headers on every answer."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def dashboard_routes(assets: Path = ASSETS) -> list[BaseRoute]:
    """``/`` and the assets' mount. The page is read here, when the app is built."""
    page = (assets / "index.html").read_bytes()

    async def dashboard(request: Request, _: NoParameters) -> Response:
        return Response(page, media_type="text/html", headers=SECURITY_HEADERS)

    return [
        OperationRoute("/", DASHBOARD.serve(dashboard)),
        Mount(ASSETS_PATH, app=DashboardFiles(directory=assets), name="dashboard"),
    ]
