"""Ids, JSON encoding, money and cursors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from shop import jsonutil
from shop.errors import InvalidInput
from shop.fields import Money
from shop.ids import uuid7
from shop.products.domain import decode_cursor, encode_cursor


def test_uuid7_is_version_7_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(2000)]
    assert all(i.version == 7 for i in ids)
    assert len(set(ids)) == len(ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)


def test_decimals_are_written_as_exact_json_numbers() -> None:
    encoded = jsonutil.dumps({"price": Decimal("19.90"), "big": Decimal("9999999999.99")})
    assert encoded == b'{"price":19.90,"big":9999999999.99}'
    assert jsonutil.loads(encoded)["price"] == 19.9


class _Priced(BaseModel):
    price: Money


@pytest.mark.parametrize(
    ("raw", "expected"), [(19.99, "19.99"), (0.1, "0.10"), (5, "5.00"), (1e3, "1000.00")]
)
def test_money_keeps_the_digits_that_were_sent(raw: float, expected: str) -> None:
    assert str(_Priced(price=raw).price) == expected


@pytest.mark.parametrize("raw", ["1.00", True, -0.01, 0.001, 1e12, None])
def test_money_refuses_what_is_not_a_price(raw: object) -> None:
    with pytest.raises(ValidationError):
        _Priced(price=raw)


def test_cursor_round_trips_and_foreign_cursors_are_refused() -> None:
    assert decode_cursor(encode_cursor(12345)) == 12345
    for bad in ("", "abc", "cDEyx", "!!!"):
        with pytest.raises(InvalidInput):
            decode_cursor(bad)
