"""The request fields take exactly what their documented schema admits (issue 22): a value JSON
Schema counts as valid, read as Schemathesis reads it (jsonschema-rs), is accepted, and one it
counts as invalid is refused. Integers may be written `876.0`; prices have two decimals."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

from shop.fields import EXACT_FLOAT_INTEGER, MAX_AMOUNT, MAX_ID, EntityId, Money, Name, Quantity
from shop.orders.models import PlaceOrder
from shop.products.models import ProductCreate


class _Fields(BaseModel):
    # Strict, as every request model is.
    model_config = ConfigDict(strict=True)

    quantity: Quantity = 1
    id: EntityId = 1
    price: Money = Decimal(0)
    name: Name = "n"


def _schema(name: str) -> Any:
    """A field's schema as the documents carry it (FastAPI copies the model's)."""
    return jsonschema_rs.validator_for(_Fields.model_json_schema()["properties"][name])


def _taken(name: str, value: object) -> Any:
    """The field as the service reads it from a JSON body, or None if refused."""
    try:
        return getattr(_Fields.model_validate_json(json.dumps({name: value})), name)
    except ValidationError:
        return None


def test_the_models_use_these_fields_and_their_schemas() -> None:
    ours = _Fields.model_json_schema()["properties"]
    order = PlaceOrder.model_json_schema()["properties"]
    product = ProductCreate.model_json_schema()["properties"]
    pairs = [(order["quantity"], ours["quantity"]), (order["user_id"], ours["id"])]
    pairs += [(product["price"], ours["price"]), (product["name"], ours["name"])]
    for used, tested in pairs:
        assert {k: v for k, v in used.items() if k not in ("title", "default")} == {
            k: v for k, v in tested.items() if k not in ("title", "default")
        }
    assert product["price"]["multipleOf"] == 0.01


# --- integers ---------------------------------------------------------------------------------

integers = st.integers(min_value=-(2**64), max_value=2**64)


@given(integers)
@example(876)
@example(0)
@example(MAX_ID)
def test_an_integer_is_taken_as_written_exactly_when_its_schema_admits_it(value: int) -> None:
    for name in ("quantity", "id"):
        admitted = _schema(name).is_valid(value)
        assert _taken(name, value) == (value if admitted else None)


@given(st.integers(min_value=-EXACT_FLOAT_INTEGER, max_value=EXACT_FLOAT_INTEGER))
@example(876)
@example(1_000_000)
@example(1_000_001)
def test_a_number_with_a_zero_fraction_is_that_integer(value: int) -> None:
    # `876.0`: JSON Schema counts numbers by value, so it is the integer 876.
    written = float(value)
    for name in ("quantity", "id"):
        admitted = _schema(name).is_valid(written)
        assert admitted == _schema(name).is_valid(value)
        taken = _taken(name, written)
        assert taken == (value if admitted else None)
        assert taken is None or type(taken) is int


@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()))
@example(876.5)
@example(1.0000000000000002)
def test_a_number_with_a_fraction_is_no_integer(value: float) -> None:
    assert _taken("quantity", value) is None
    assert _taken("id", value) is None


@pytest.mark.parametrize("value", [True, False, "1", None, [1], 1e300, 2.0**63, -876.0])
def test_what_is_not_an_integer_in_range_is_refused(value: object) -> None:
    assert _taken("quantity", value) is None
    assert _taken("id", value) is None


def test_past_2_53_an_integer_is_taken_only_as_written_without_a_fraction() -> None:
    """A float past 2**53 no longer names one integer (`9007199254740993.0` reads as
    9007199254740992.0),
    so an id there must be written as an integer; docs/decisions.md."""
    assert _taken("id", float(EXACT_FLOAT_INTEGER)) == EXACT_FLOAT_INTEGER
    assert _taken("id", float(EXACT_FLOAT_INTEGER + 1)) is None
    assert _taken("id", 2.0**60) is None
    assert _taken("id", 2**60) == 2**60
    body = '{"user_id": 9007199254740993.0, "product_id": 1, "quantity": 1}'
    with pytest.raises(ValidationError, match="must be a JSON integer"):
        PlaceOrder.model_validate_json(body)


# --- prices -----------------------------------------------------------------------------------

cents = st.integers(min_value=0, max_value=int(MAX_AMOUNT * 100))
prices = st.one_of(
    cents.map(lambda c: float(Decimal(c) / 100)),  # every price, as a client's float holds it
    cents.map(lambda c: c / 100),  # as binary arithmetic makes it: 57 / 100, 0.1 + 0.2
    st.floats(min_value=-1, max_value=float(MAX_AMOUNT) * 1.01),
    st.decimals(min_value=-1, max_value=MAX_AMOUNT + 1, places=3).map(float),
    st.integers(min_value=-10, max_value=10**11),
)


@given(prices)
@example(0.07)  # 0.07 / 0.01 is 7.000000000000001 in binary floats; still a multiple
@example(0.1 + 0.2)  # 0.30000000000000004: not a price
@example(19.999)
@example(9999999999.99)
@example(9999999999.991)
@example(5e-324)
@example(-0.0)
def test_a_price_is_taken_exactly_when_its_schema_admits_it(value: float) -> None:
    admitted = _schema("price").is_valid(value)
    taken = _taken("price", value)
    assert (taken is not None) == admitted, (value, taken)
    if taken is not None:
        # The decimal the number spells, in cents: 19.9 is 19.90.
        assert taken == Decimal(repr(value))
        assert taken.as_tuple().exponent == -2


@pytest.mark.parametrize("value", ["1.00", True, None, [1]])
def test_a_price_is_a_json_number(value: object) -> None:
    assert _taken("price", value) is None


# --- names ------------------------------------------------------------------------------------

# Python's whitespace and ECMA-262's differ at these; a name's pattern must follow str.strip.
EDGES = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


# What a JSON body can carry: UTF-8, so no lone surrogates (orjson refuses a "\ud800" escape).
@given(st.text(alphabet=st.sampled_from(EDGES) | st.characters(codec="utf-8"), max_size=210))
@example(" ")
@example("\x1c")
@example("\ufeff")
@example(" " + "a" * 200)
@example(" chair ")
def test_a_name_is_taken_exactly_when_its_schema_admits_it(value: str) -> None:
    admitted = _schema("name").is_valid(value)
    taken = _taken("name", value)
    assert (taken is not None) == admitted, (value, taken)
    assert taken is None or taken == value.strip()
