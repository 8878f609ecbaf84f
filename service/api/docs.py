"""Interactive API docs that work offline and sign in (issue 16.5).

Swagger UI (`/docs`) and ReDoc (`/redoc`) load their scripts and styles from a package on this server (the copies
fastapi-offline ships), never from a CDN, so a machine without internet still shows them. The OpenAPI document
declares the two ways to send a key, `Authorization: Bearer KEY` and `x-api-key: KEY`, on every operation that
takes one, so Swagger UI shows its Authorize button and sends the key with "Try it out".
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
# Paths whose operations authenticate with an API key (the rest: health, metrics, the dashboard's pages).
AUTHENTICATED = ("/v1/", "/anthropic/", "/openai/")
# The pages reach nothing but this server, even where a bundle names an outside URL (ReDoc's Redocly logo, from
# cdn.redoc.ly): a closed network sees no failed requests, an open one no call-outs. 'unsafe-inline': FastAPI's pages
# start the bundles with an inline script; ReDoc styles itself inline and searches in a blob: worker.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer KEY` (an mmjobs API key)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "`x-api-key: KEY`."},
}


def _assets_dir() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-offline is not installed: pip install -e .")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets and declare the security schemes (create the app with
    docs_url=None and redoc_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=_assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            # No call-out to validator.swagger.io (the badge under the spec).
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
            for path, operations in schema.get("paths", {}).items():
                if path.startswith(AUTHENTICATED):
                    for operation in operations.values():
                        operation.setdefault("security", [{"bearer": []}, {"apiKey": []}])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
