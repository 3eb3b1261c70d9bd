"""``/docs``: interactive API documentation (Swagger UI) over ``/openapi.json``.

Swagger UI's files come from a PyPI package (``openapi-ui-bundles``, Swagger UI 5, which
reads OpenAPI 3.1), served from the installed package under ``/docs/assets``: no CDN, no
copy in this repository (ADR 0028). The page and its start-up script are ours: the script
points Swagger UI at this server's ``/openapi.json`` and turns off the online validator
badge (it would send the document to an outside host). A Content-Security-Policy on the
page lets the browser load nothing from anywhere else.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Annotated, Final

from openapi_ui_bundles import swagger_ui
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute

from .errors import ApiError
from .operations import Operation, OperationRoute, Text
from .schemas.common import QUERY, NoParameters

__all__ = ["ASSET", "DOCS", "docs_routes"]

ASSETS: Final = "/docs/assets"
INIT_SCRIPT: Final = "init.js"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE: Final = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>defi-realtime API</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS}/{INIT_SCRIPT}"></script>
</body>
</html>
"""

# No inline script (the CSP allows none): the start-up code is a file of its own.
INIT: Final = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false,
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""

DOCS = Operation(
    "GET",
    "getDocs",
    "Interactive API documentation (Swagger UI) of this document",
    NoParameters,
    Text("text/html; charset=utf-8"),
    description="An HTML page; its scripts and styles are served under `/docs/assets/` "
    "from the installed package, nothing from another host.",
)


class AssetPath(BaseModel):
    model_config = QUERY
    file: Annotated[str, Field(description="a file of the page: script, stylesheet, icon")]


ASSET = Operation(
    "GET",
    "getDocsAsset",
    "A script, stylesheet or icon of the documentation page",
    NoParameters,
    Text("*/*"),
    path=AssetPath,
    errors=(404,),
)


def _bundle_files(directory: Path) -> dict[str, Path]:
    """The files Swagger UI's distribution ships, by name (source maps left out): the only
    names served, so no path from a request ever reaches the file system."""
    return {
        path.name: path
        for path in directory.iterdir()
        if path.is_file() and not path.name.endswith(".map")
    }


async def docs_page(request: Request, query: NoParameters) -> Response:
    return Response(
        PAGE,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


def docs_routes() -> list[BaseRoute]:
    """The page and its assets (operations, so the OpenAPI document lists them)."""
    files = _bundle_files(Path(str(swagger_ui.static_path)))

    async def asset(request: Request, query: NoParameters) -> Response:
        name = request.path_params["file"]
        if name == INIT_SCRIPT:
            return Response(INIT, media_type="text/javascript; charset=utf-8")
        path = files.get(name)
        if path is None:
            raise ApiError(404, "not_found", f"no documentation asset {name!r}")
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if media_type.startswith("text/"):
            media_type += "; charset=utf-8"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    return [
        OperationRoute("/docs", DOCS.serve(docs_page)),
        OperationRoute(f"{ASSETS}/{{file:str}}", ASSET.serve(asset)),
    ]
