"""`/docs` (Swagger UI) and `/redoc` served with their assets from the service itself, so that
they work on a machine without the internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (blank offline). The assets here are
the copies the `fastapi-offline` package ships in its `static` folder (Swagger UI 5, ReDoc 2,
a favicon); only that folder is used, mounted at `/docs/assets`. Every URL in the pages is a
path on this service (under the ASGI root path), never an `http(s)://` one.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    swagger_ui_default_parameters,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

DOCS = "/docs"
REDOC = "/redoc"
ASSETS = "/docs/assets"
_PACKAGE_ASSETS = ("fastapi_offline", "static")

# FastAPI's defaults, and no call to the public validator (Swagger UI's `validatorUrl`).
SWAGGER_UI_PARAMETERS = {**swagger_ui_default_parameters, "validatorUrl": None}


def install(app: FastAPI) -> None:
    """Add `/docs`, `/redoc` and their assets to an app made with `docs_url=None,
    redoc_url=None`; the OpenAPI document stays at `app.openapi_url`."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("build the app with docs_url=None and redoc_url=None")
    openapi_url = app.openapi_url or "/openapi.json"
    # Raises at start if the package folder is missing, rather than a blank page later.
    assets = StaticFiles(packages=[_PACKAGE_ASSETS])
    app.mount(ASSETS, assets, name="docs-assets")

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")
