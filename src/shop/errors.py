"""Domain errors, raised below the entrypoints and turned into problem+json in one place."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request the shop refuses; `status` and `title` become the problem response."""

    status = 400
    title = "Bad request"
    type_ = "about:blank"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers: dict[str, str] = {}


class NotFound(DomainError):
    status = 404
    title = "Not found"


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class OutOfStock(Conflict):
    title = "Out of stock"
    type_ = "/problems/out-of-stock"


class IdempotencyMismatch(DomainError):
    status = 422
    title = "Idempotency-Key reused with a different request"
    type_ = "/problems/idempotency-key-reused"


class InvalidInput(DomainError):
    """Input that passed the schema but names something that cannot be used."""

    status = 422
    title = "Invalid input"
    type_ = "/problems/validation"

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(detail, extra={"errors": [{"field": field, "message": detail}]})
        self.field = field


class Unavailable(DomainError):
    """A dependency (database or broker) did not answer in time; the client may retry."""

    status = 503
    title = "Service unavailable"
    type_ = "/problems/unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers["Retry-After"] = str(retry_after)


class QueryTimeout(Unavailable):
    """The database stopped a query at its time limit: the request cost too much."""

    title = "Query took too long"
    type_ = "/problems/query-timeout"
