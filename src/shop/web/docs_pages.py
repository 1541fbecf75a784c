"""`/docs` (Swagger UI) and `/redoc` served with their assets from the service itself, so that
they work on a machine without the internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (blank offline). The assets here are
the copies the `fastapi-offline` package ships in its `static` folder (Swagger UI 5, ReDoc 2,
a favicon); only that folder is used, mounted at `/docs/assets`. Every URL in the pages is a
path on this service (under the ASGI root path), never an `http(s)://` one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS = "/docs"
REDOC = "/redoc"
ASSETS = "/docs/assets"


def install(app: FastAPI) -> None:
    """Add `/docs`, `/redoc` and their assets to an app made with `docs_url=None,
    redoc_url=None`; the OpenAPI document stays at `app.openapi_url`."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("build the app with docs_url=None and redoc_url=None")
    openapi_url = app.openapi_url or "/openapi.json"
    # Raises at start if the package folder is missing, rather than a blank page later.
    assets = StaticFiles(packages=[("fastapi_offline", "static")])
    app.mount(ASSETS, assets, name="docs-assets")

    def serve(path: str, title: str, page: Callable[..., HTMLResponse], **files: str) -> None:
        """`page` at `path`: its OpenAPI and asset URLs (`files`) under the request's root path."""

        async def html(request: Request) -> HTMLResponse:
            root = str(request.scope.get("root_path", "")).rstrip("/")
            urls = {argument: f"{root}{ASSETS}/{file}" for argument, file in files.items()}
            return page(openapi_url=root + openapi_url, title=f"{app.title} - {title}", **urls)

        app.add_api_route(path, html, include_in_schema=False)

    # FastAPI's defaults, and no call to the public validator (Swagger UI's `validatorUrl`).
    swagger_ui_parameters = {**swagger_ui_default_parameters, "validatorUrl": None}
    serve(
        DOCS,
        "Swagger UI",
        partial(get_swagger_ui_html, swagger_ui_parameters=swagger_ui_parameters),
        swagger_js_url="swagger-ui-bundle.js",
        swagger_css_url="swagger-ui.css",
        swagger_favicon_url="favicon.png",
    )
    serve(
        REDOC,
        "ReDoc",
        partial(get_redoc_html, with_google_fonts=False),
        redoc_js_url="redoc.standalone.js",
        redoc_favicon_url="favicon.png",
    )
