"""The catalogue's rules, without I/O: what a product is, what a change may touch, the version
each event carries, and which pages a client may ask for."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any, NamedTuple

from shop.errors import InvalidInput
from shop.events import Event


@dataclass(frozen=True, slots=True)
class ProductView:
    """A product as the API shows it (orjson writes the fields in this order)."""

    id: int
    name: str
    description: str
    price: Decimal
    stock: int | None  # None: not tracked
    created_at: dt.datetime  # naive UTC, as stored: shop.jsonutil writes it with a Z
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Versioned:
    """A product as stored: with its version, which every change bumps (orders' stock too)."""

    product: ProductView
    version: int

    def changed(self, changes: Mapping[str, Any], now: dt.datetime) -> Versioned | None:
        """This product after `changes` made at `now`, one version on; None if none."""
        if not changes:
            return None
        if not changes.keys() <= EDITABLE:
            raise ValueError(f"not editable: {sorted(changes.keys() - EDITABLE)}")
        if "price" in changes:  # as the database gives it back: -0.00 is 0.00
            changes = {**changes, "price": changes["price"] + 0}
        return Versioned(replace(self.product, **changes, updated_at=now), self.version + 1)


FIRST_VERSION = 1
EDITABLE = frozenset({"name", "description", "price", "stock"})  # what an update may change


def created(product: ProductView) -> Event:
    return Event("product", "product.created", str(product.id), FIRST_VERSION, asdict(product))


def updated(stored: Versioned) -> Event:
    product = stored.product
    return Event("product", "product.updated", str(product.id), stored.version, asdict(product))


def deleted(stored: Versioned) -> Event:
    """The deletion is a change too: the version after the product's last one."""
    product_id = stored.product.id
    return Event(
        "product", "product.deleted", str(product_id), stored.version + 1, {"id": product_id}
    )


class ProductQuery(NamedTuple):
    """A page of the catalogue: keyset `cursor`, optional name search and price range.

    A tuple: the page cache's key, hashed on every read of `GET /products`.
    """

    limit: int = 100
    cursor: str | None = None
    name: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None

    def is_search(self) -> bool:
        """Whether the page is filtered (by name or price), so its cost depends on the data."""
        return self.name is not None or self.min_price is not None or self.max_price is not None


def start_of(query: ProductQuery) -> int | None:
    """The id after which the page starts; refuses a foreign cursor and a name the catalogue's
    index cannot search."""
    if query.name is not None:  # an empty name too: it is no search the index can serve
        search_words(query.name)
    return None if query.cursor is None else decode_cursor(query.cursor)


def matches_nothing(query: ProductQuery) -> bool:
    """An upside-down price range: a filter no product passes (an empty page, not an error)."""
    low, high = query.min_price, query.max_price
    return low is not None and high is not None and low > high


# The name search is served by a FULLTEXT index on `products.name`, which holds the words of
# at least MIN_WORD letters, digits or underscores (innodb_ft_min_token_size, 3 by default on
# MariaDB and MySQL): a product matches when its name contains the searched text and each
# searched word of MIN_WORD or more characters starts a word of the name. A search with no such
# word cannot use the index (it would scan every product), so it is refused.
MIN_WORD = 3
_WORDS = re.compile(r"\w+")


def search_words(name: str) -> list[str]:
    """The words of a name search that the index holds; InvalidInput if there are none."""
    words = [word for word in _WORDS.findall(name) if len(word) >= MIN_WORD]
    if not words:
        raise InvalidInput(
            f"name must contain a word of at least {MIN_WORD} letters or digits: the search "
            "index holds no shorter words, so a search without one would read every product",
            field="name",
        )
    return words


def name_matches(product_name: str, name: str) -> bool:
    """Whether a product's name matches a name search (what the index and the query find)."""
    have = product_name.casefold()
    words = _WORDS.findall(have)
    searched = search_words(name.casefold())
    return name.casefold() in have and all(any(w.startswith(s) for w in words) for s in searched)


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"p{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("p") or not raw[1:].isdigit():
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("not a cursor this service issued", field="cursor") from None
