"""What the OpenAPI documents declare beyond FastAPI's defaults: every refusal an operation may
answer (RFC 9457 problem+json, with its headers), the headers of successful answers, and the
links between operations (docs/fuzzing.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI

from shop.fields import MAX_ID

# The problem+json body every refusal carries (problems.problem). Written out rather than as a
# component: an operation's declaration then stands on its own, whoever builds the document.
PROBLEM: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "`about:blank` or `/problems/<kind>`"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "For invalid input: each field refused, and why.",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "limit": {
            "type": "string",
            "description": "For 429: the limit that was reached (`orders`, `units`, `searches`).",
        },
        "checks": {
            "type": "object",
            "description": "For `/readyz`: each dependency, `ok`, `failed` or `timed out` "
            "(why is in the service's log).",
            "additionalProperties": {"type": "string"},
        },
    },
}


def _header(description: str, *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


RETRY_AFTER = {"Retry-After": _header("Seconds to wait before retrying.")}
CHALLENGE = {"WWW-Authenticate": _header("The bearer challenge (RFC 6750), with the error.")}
LOCATION = {"Location": _header("Where the order or product can be read.")}
NEXT_PAGE = {
    "Link": _header(
        'The next page, `</path?query>; rel="next"` (relative to this request\'s URL), if any.',
        required=False,
    )
}

_REFUSALS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body is not valid JSON.", {}),
    401: ("No access token, or one that does not verify.", CHALLENGE),
    403: ("The token lacks the scope, or the customer, this needs.", CHALLENGE),
    404: ("Not found.", {}),
    409: ("Conflict.", {}),
    413: ("The request body is too large.", {}),
    415: ("The body is not sent as JSON.", {}),
    422: ("Invalid input: `errors` names each field.", {}),
    429: ("Over one of the caller's limits, named by `limit`.", RETRY_AFTER),
    503: ("The database or a broker did not answer in time.", RETRY_AFTER),
}

# The refusals of every operation that reads a JSON body, and of every one that needs a token.
BODY = (400, 413, 415, 422)
TOKEN = (401, 403)


def refusal(status: int, description: str | None = None) -> dict[str, Any]:
    """One declared refusal: a problem+json body, and the headers that come with its status."""
    default, headers = _REFUSALS[status]
    declared: dict[str, Any] = {
        "description": description or default,
        "content": {"application/problem+json": {"schema": PROBLEM}},
    }
    if headers:
        declared["headers"] = headers
    return declared


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The declared refusals of an operation, for its route's `responses`."""
    return {status: refusal(status) for status in sorted(set(statuses))}


def created(
    links: dict[str, Any], *statuses: int, also: Mapping[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """What a POST that creates declares: 201 with the new resource's Location and `links`,
    then its refusals (`statuses`) and the `also` responses."""
    created = {201: {"headers": LOCATION, "links": links}}
    return {"status_code": 201, "responses": {**created, **refusals(*statuses), **(also or {})}}


def link(operation_id: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to `operation_id`, its parameters taken from this answer."""
    return {"operationId": operation_id, "parameters": parameters}


def amend(app: FastAPI, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply `edit` to the app's OpenAPI document once it is built (after any earlier edits)."""
    build = app.openapi

    @functools.cache
    def openapi() -> dict[str, Any]:
        document = build()
        edit(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def exact_integer_bounds(document: Any) -> None:
    """Write an integer schema's bounds as integers. FastAPI's models hold the bounds of a
    model's fields as floats: `1.0`, and for an id `float(2**63 - 1)`, which is 2**63 (a bound
    one above what the service takes); the ids' is the one bound past 2**53 in these documents."""
    if isinstance(document, list):
        for item in document:
            exact_integer_bounds(item)
    elif isinstance(document, dict):
        if document.get("type") == "integer":
            for key in ("minimum", "maximum"):
                bound = document.get(key)
                if isinstance(bound, float) and bound.is_integer():
                    document[key] = MAX_ID if bound == float(MAX_ID) else int(bound)
        for value in document.values():
            exact_integer_bounds(value)
