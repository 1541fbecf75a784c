"""The catalogue's search: what a name matches (what the FULLTEXT index and the query find), the
searches refused as too costly (422, named), and each client's search limit (429), which plain
pages and catalogue operators do not meet. Over the in-memory catalogue."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from shop.access.client_address import Clients
from shop.access.rate_limit import SearchLimits
from shop.errors import InvalidInput
from shop.products import api as product_api
from shop.products.domain import name_matches, search_words
from shop.settings import Http, Products
from shop.web import app_factory, openapi
from tests.clock import FakeClock
from tests.tokens import Issuer
from tests.unit.protocol_client import ProtocolTransport
from tests.unit.test_lean import products_in_memory

ISSUER = Issuer()


@pytest.mark.parametrize(
    ("name", "search", "matches"),
    [
        ("Coffee Mug", "mug", True),
        ("Coffee Mug", "MUG", True),
        ("Mugs and cups", "mug", True),
        ("Smug cat", "mug", False),  # not at the start of a word
        ("TV stand", "tv stand", True),  # "tv" is checked next to "stand"
        ("TV stand", "tv stan", True),
        ("TV stand", "v stand", True),
        ("The Mug", "the mug", True),  # no stopwords
        ("chair-abc123", "chair-abc", True),
        ("chair-abc123", "chair abc", False),  # the text itself must be there
        ("café au lait", "caf", True),
    ],
)
def test_a_name_matches_where_its_words_start_with_the_searched_ones(
    name: str, search: str, matches: bool
) -> None:
    assert name_matches(name, search) is matches


@pytest.mark.parametrize("search", ["", "tv", "a b", "%_", "--", "  ", "x-y-z", "日本"])
def test_a_search_without_a_word_of_three_characters_is_refused(search: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        search_words(search)
    assert refused.value.field == "name"


@given(name=st.text(max_size=30), search=st.text(min_size=3, max_size=10))
def test_a_match_always_holds_the_searched_text(name: str, search: str) -> None:
    """The index can only narrow the old substring match: it never finds more."""
    try:
        matched = name_matches(name, search)
    except InvalidInput:
        return
    if matched:
        assert search.casefold() in name.casefold()


def _app(limits: SearchLimits, trusted: tuple[str, ...] = ()) -> FastAPI:
    products, auth = products_in_memory(), ISSUER.authenticator()
    app = app_factory.new_app(
        "test", service="search-test", http=Http(), lean=product_api.lean_routes(products)
    )
    app.include_router(product_api.router(products, auth, limits, Clients(trusted)))
    return app


def _limits(clock: FakeClock) -> SearchLimits:
    return SearchLimits(
        Products(search_rate_per_second=1.0, search_burst=3), slots=1024, clock=clock
    )


async def _get(app: FastAPI, url: str, **headers: str) -> httpx.Response:
    """The answer over the services' HTTP protocol, which serves the lean route (plain pages)."""
    transport = ProtocolTransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        return await client.get(url, headers=headers)


async def test_an_unsearchable_name_is_422_naming_the_field_and_counts_no_search() -> None:
    app = _app(_limits(FakeClock()))
    # An empty name is refused too, as the document's pattern says (it is no search at all).
    for search in ("%25_", "", "%25_", "", "tv"):
        refused = await _get(app, f"/products?name={search}")
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in refused.json()["errors"]] == ["name"]
    found = await _get(app, "/products?name=chair&limit=1000")
    assert found.status_code == 200
    assert len(found.json()) == 30


async def test_a_client_searching_past_its_limit_gets_429_and_plain_pages_do_not() -> None:
    clock = FakeClock()
    app = _app(_limits(clock))
    for search in ("name=chair", "min_price=3", "max_price=7"):
        assert (await _get(app, f"/products?{search}")).status_code == 200
    refused = await _get(app, "/products?name=table")
    assert refused.status_code == 429
    assert refused.json()["limit"] == "searches"
    assert int(refused.headers["retry-after"]) == 1
    for _ in range(10):
        assert (await _get(app, "/products?limit=5")).status_code == 200
    clock.now += 1
    assert (await _get(app, "/products?name=table")).status_code == 200


async def test_searches_count_per_customer_token_and_not_for_catalogue_operators() -> None:
    app = _app(_limits(FakeClock()))
    for _ in range(3):
        assert (await _get(app, "/products?name=chair")).status_code == 200
    assert (await _get(app, "/products?name=chair")).status_code == 429  # this address
    customer = ISSUER.bearer(8)
    for _ in range(3):
        assert (await _get(app, "/products?name=chair", **customer)).status_code == 200
    assert (await _get(app, "/products?name=chair", **customer)).status_code == 429
    operator = ISSUER.bearer("catalogue", ["products:write"])
    for _ in range(10):
        assert (await _get(app, "/products?name=chair", **operator)).status_code == 200
    # A token that does not verify is no token: the address's searches, spent.
    forged = {"Authorization": "Bearer not.a.token"}
    assert (await _get(app, "/products?name=chair", **forged)).status_code == 429


async def test_clients_behind_a_trusted_proxy_are_told_apart() -> None:
    app = _app(_limits(FakeClock()), trusted=("127.0.0.1",))  # the fake socket's peer
    for client in ("198.51.100.1", "198.51.100.2"):
        for _ in range(3):
            answer = await _get(app, "/products?name=chair", **{"X-Forwarded-For": client})
            assert answer.status_code == 200
        answer = await _get(app, "/products?name=chair", **{"X-Forwarded-For": client})
        assert answer.status_code == 429


def test_the_document_declares_the_search_rules_and_limits() -> None:
    app = _app(_limits(FakeClock()))
    openapi.amend(app, partial(product_api.document_limits, products=Products()))
    operation: dict[str, Any] = app.openapi()["paths"]["/products"]["get"]
    [name] = [p for p in operation["parameters"] if p["name"] == "name"]
    # No pattern: a JSON Schema pattern's \w is ASCII, the search's words are Unicode (the
    # 422 of a search without one is by design, tests/e2e/test_fuzz.py).
    assert name["schema"] | {"title": "Name"} == {
        "type": "string",
        "maxLength": 200,
        "title": "Name",
    }
    assert "422" in name["description"]
    assert "SEARCH_RATE_PER_SECOND" in operation["responses"]["429"]["description"]
    assert "Retry-After" in operation["responses"]["429"]["headers"]
    assert "PRODUCT_QUERY_SECONDS" in operation["responses"]["503"]["description"]
