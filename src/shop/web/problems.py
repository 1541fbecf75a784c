"""Problem+json answers (RFC 9457) and the handlers that turn every refusal into one.

Domain errors, validation failures, HTTP-level errors and a database that does not answer each
become a problem response here, in one place; `install_handlers` adds them to an app.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import URL
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response
from starlette.types import Scope

from shop import jsonutil
from shop.errors import DomainError, Unavailable
from shop.web.fastpath.routes import allowed_methods

log = logging.getLogger(__name__)


class JSONResponse(StarletteJSONResponse):
    """A JSON response encoded with orjson (decimals as exact numbers).

    A Starlette JSONResponse, so that FastAPI documents a route's response model with it.
    """

    def render(self, content: Any) -> bytes:
        return jsonutil.dumps(content)


def next_page_link(scope: Scope, cursor: str | None) -> dict[str, str]:
    """The `Link: <...>; rel="next"` header of a keyset-paginated list, if there is a next page:
    the request's path and query with the next cursor, as a relative reference (RFC 3986
    section 4.2, resolved against the request's URL: RFC 8288 section 3.2). No scheme or host:
    nothing a client sent in `Host` is echoed, and a proxy in front changes nothing."""
    if cursor is None:
        return {}
    query = scope["query_string"].decode("latin-1")
    url = URL(path=quote(scope["path"]), query=query).include_query_params(cursor=cursor)
    return {"Link": f'<{url}>; rel="next"'}


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """An RFC 9457 problem+json response."""
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return Response(
        jsonutil.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers=dict(headers or {}),
    )


def _field_name(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(err.get("type") == "json_invalid" for err in errors):
        return problem(400, "Malformed JSON", "The request body is not valid JSON.")
    if _body_not_json(request, errors):
        return problem(
            415,
            "Unsupported media type",
            "Send the request body as JSON with Content-Type: application/json.",
        )
    listed = [{"field": _field_name(err["loc"]), "message": err["msg"]} for err in errors]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in listed)
    return problem(422, "Invalid input", detail, type_="/problems/validation", errors=listed)


def _body_not_json(request: Request, errors: Sequence[Any]) -> bool:
    # FastAPI parses a body as JSON only when it is declared so; otherwise the model sees bytes.
    content_type = request.headers.get("content-type", "")
    declared_json = content_type.startswith("application/json") or "+json" in content_type
    whole_body_wrong = any(tuple(err["loc"]) == ("body",) for err in errors)
    return bool(content_type) and not declared_json and whole_body_wrong


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem(
        exc.status, exc.title, exc.detail, type_=exc.type_, headers=exc.headers, **exc.extra
    )


_TITLES = {
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Request body too large",
}


def status_problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """The problem+json answer for an HTTP-level error (no domain type), titled by its status."""
    return problem(status, _TITLES.get(status, "Error"), detail, headers=headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status, detail, headers = exc.status_code, str(exc.detail), exc.headers
    if status in (404, 405):
        # Allow lists every method answered on the path, not only the first route's (the
        # router's), lean routes included; a path only a lean route answers, asked with another
        # method, is a 405 too, not a 404 (RFC 9110 sections 10.2.1 and 15.5.6).
        allowed = allowed_methods(request.scope)
        if status == 405 or (allowed and request.method not in allowed):
            status, detail = 405, "Method Not Allowed"
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return status_problem(status, detail, headers)


async def _on_database_down(request: Request, exc: Exception) -> Response:
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    unavailable = Unavailable("The database did not answer; retry shortly.", retry_after=2)
    return await _on_domain_error(request, unavailable)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "The server failed to answer; it has been logged.")


def install_handlers(app: FastAPI) -> None:
    """Answer every refusal and failure of `app` as problem+json."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(DomainError, _on_domain_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for down in (OperationalError, InterfaceError, PoolTimeout, TimeoutError):
        app.add_exception_handler(down, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)
