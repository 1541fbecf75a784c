"""HTTP routes of the product service: parse, call the service, map the result."""

from __future__ import annotations

import contextlib
import re
from decimal import Decimal
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, Security
from pydantic import WithJsonSchema
from starlette.types import Scope

from shop import jsonutil
from shop.access.client_address import Clients, subject_key
from shop.access.rate_limit import SearchLimits
from shop.access.verifier import Authenticator, Principal, Unauthorized, caller
from shop.fields import MAX_ID, PRICE_SCHEMA
from shop.products import domain
from shop.products.domain import ProductQuery
from shop.products.models import Product, ProductCreate, ProductPatch, ProductReplace
from shop.products.service import ProductService
from shop.settings import Products as ProductSettings
from shop.web import openapi as doc
from shop.web.dependencies import IdempotencyKey
from shop.web.fastpath.routes import LeanRoute, Reply, as_response
from shop.web.problems import JSONResponse, next_page_link

ProductId = Annotated[int, Path(ge=1, le=MAX_ID, description="The product's id")]
# A price bound in the query: a number (pydantic would document a Decimal as number or string).
PriceBound = Annotated[
    Decimal | None,
    Query(ge=0, max_digits=12, decimal_places=2),
    WithJsonSchema(PRICE_SCHEMA),
]


WRITE = "products:write"  # creating, changing and deleting products; reading is public

# What a client can do next with the product an answer names.
_BY_ID = {"product_id": "$response.body#/id"}
_NEXT = {
    "GetProduct": doc.link("get_product", **_BY_ID),
    "ReplaceProduct": doc.link("replace_product", **_BY_ID),
    "PatchProduct": doc.link("patch_product", **_BY_ID),
    "DeleteProduct": doc.link("delete_product", **_BY_ID),
}


# A name search: what it matches, and the searches it may not make (domain.search_words). No
# `pattern`: the refusal counts Unicode letters and digits (as the FULLTEXT index does), and a
# JSON Schema pattern's `\w` is ASCII (ECMA-262): `\w{3}` refused "Uúä", which we serve.
NameSearch = Annotated[
    str | None,
    Query(
        max_length=200,
        description="Products whose name contains this text (case-insensitive), each of its "
        f"words of {domain.MIN_WORD} or more characters starting a word of the name. It must "
        f"hold a word of at least {domain.MIN_WORD} letters, digits or underscores (422 "
        "otherwise): the search index holds no shorter words.",
    ),
    WithJsonSchema({"type": "string", "maxLength": 200}),
]


def document_limits(document: dict[str, Any], *, products: ProductSettings) -> None:
    """Declare the search limits (as configured) in `GET /products`' 429 and 503."""
    answers = document["paths"]["/products"]["get"]["responses"]
    answers["429"]["description"] = (
        f"A search (a `name`, `min_price` or `max_price`) beyond the client's limit, "
        f"`limit` `searches`: {products.search_burst} at once, then "
        f"{products.search_rate_per_second:g} a second (SEARCH_BURST, SEARCH_RATE_PER_SECOND), "
        "per client address (an IPv6 client by its /64; behind a proxy in FORWARDED_ALLOW_IPS, "
        "the address it forwards), or per token subject for a customer's token; a token with "
        "`products:write` is not limited. Plain pages are not limited."
    )
    slow = (
        "The database did not answer in time, or stopped the query at its time limit "
        f"({products.query_seconds:g} s, PRODUCT_QUERY_SECONDS)"
    )
    answers["503"]["description"] = (
        f"{slow}, or too many searches are running ({products.search_concurrency} per worker, "
        "SEARCH_CONCURRENCY)."
    )
    document["paths"]["/products/{product_id}"]["get"]["responses"]["503"]["description"] = (
        f"{slow}."
    )


def router(
    service: ProductService, auth: Authenticator, searches: SearchLimits, clients: Clients
) -> APIRouter:
    api = APIRouter(prefix="/products", tags=["products"])
    writer = Security(caller(auth), scopes=[WRITE])

    async def searcher(request: Request) -> int | None:
        """Whose searches a request counts against: a customer's token subject, else the
        client's address; None for a catalogue operator (products:write), who is not limited.
        Reading is public: a token that does not verify counts as none."""
        authorization = request.headers.get("authorization")
        if authorization is not None:
            with contextlib.suppress(Unauthorized):
                principal = await auth.principal(authorization)
                return None if principal.has(WRITE) else subject_key(principal.subject)
        return clients.key(request.scope)

    @api.get(
        "",
        operation_id="list_products",
        response_model=list[Product],
        # The 429's and 503's terms, as configured: document_limits.
        responses={200: {"headers": doc.NEXT_PAGE}, **doc.refusals(422, 429, 503)},
    )
    async def list_products(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        name: NameSearch = None,
        min_price: PriceBound = None,
        max_price: PriceBound = None,
    ) -> Response:
        """List products in id order, a page at a time; the next page is in the Link header.

        Searches (by name or price) are limited per client; plain pages are not.
        """
        query = ProductQuery(
            limit=limit, cursor=cursor, name=name, min_price=min_price, max_price=max_price
        )
        if query.is_search():
            domain.start_of(query)  # what it refuses (422) costs no search
            client = await searcher(request)
            if client is not None:
                searches.admit(client)
        return as_response(await _page(service, request.scope, query))

    @api.post(
        "",
        operation_id="create_product",
        response_model=Product,
        **doc.created(_NEXT, *doc.BODY, *doc.TOKEN, 503),
    )
    async def create_product(
        body: ProductCreate, principal: Principal = writer, key: IdempotencyKey = None
    ) -> Response:
        """Create a product (scope `products:write`)."""
        answer = await service.create_product(body, owner=principal.subject, idempotency_key=key)
        location = f"/products/{jsonutil.loads(answer.body)['id']}".encode()
        return as_response(Reply(answer.status, answer.body, ((b"location", location),)))

    @api.get(
        "/{product_id}",
        operation_id="get_product",
        response_model=Product,
        responses=doc.refusals(404, 422, 503),
    )
    async def get_product(product_id: ProductId) -> Any:
        """Get one product."""
        return JSONResponse(await service.get_product(product_id))

    # PUT and PATCH answer alike: the product after the change.
    updating: dict[str, Any] = {
        "response_model": Product,
        "responses": doc.refusals(*doc.BODY, *doc.TOKEN, 404, 503),
    }

    @api.put("/{product_id}", operation_id="replace_product", **updating)
    async def replace_product(
        product_id: ProductId, body: ProductReplace, _: Principal = writer
    ) -> Any:
        """Replace every field of a product (scope `products:write`)."""
        return JSONResponse(await service.update_product(product_id, body.model_dump()))

    @api.patch("/{product_id}", operation_id="patch_product", **updating)
    async def patch_product(
        product_id: ProductId, body: ProductPatch, _: Principal = writer
    ) -> Any:
        """Change some fields of a product (scope `products:write`)."""
        return JSONResponse(await service.update_product(product_id, body.changes()))

    @api.delete(
        "/{product_id}",
        operation_id="delete_product",
        status_code=204,
        responses=doc.refusals(*doc.TOKEN, 404, 422, 503),
    )
    async def delete_product(product_id: ProductId, _: Principal = writer) -> Response:
        """Delete a product (scope `products:write`)."""
        await service.delete_product(product_id)
        return Response(status_code=204)

    return api


def lean_routes(service: ProductService) -> list[LeanRoute[Any]]:
    """`GET /products` (optionally with `limit` and `cursor`) without FastAPI (`fastpath`)."""

    return [LeanRoute("GET", "/products", _plain_list, partial(_page, service), reads_body=False)]


async def _page(service: ProductService, scope: Scope, query: ProductQuery) -> Reply:
    """A page and its next-page link, for the FastAPI route and the lean route alike."""
    page = await service.list_products_json(query)
    link = next_page_link(scope, page.next_cursor)
    return Reply(200, page.body, tuple((k.lower().encode(), v.encode()) for k, v in link.items()))


_LIMIT = re.compile(rb"[1-9][0-9]{0,3}")
_CURSOR = re.compile(rb"[A-Za-z0-9_-]{1,200}")


def _plain_list(scope: Scope, _body: bytes) -> ProductQuery | None:
    """A query of at most one plain `limit` (1-1000) and one plain `cursor`; else None."""
    limit, cursor = None, None
    query_string: bytes = scope["query_string"]
    for part in query_string.split(b"&") if query_string else ():
        name, _, value = part.partition(b"=")
        if name == b"limit" and limit is None and _LIMIT.fullmatch(value):
            limit = int(value)
            if limit > 1000:
                return None
        elif name == b"cursor" and cursor is None and _CURSOR.fullmatch(value):
            cursor = value.decode()
        else:
            return None
    return ProductQuery(limit=limit or 100, cursor=cursor)
