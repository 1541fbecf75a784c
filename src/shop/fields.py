"""Field types shared by the request schemas: strict, so wrong JSON types are refused, and
documented with every limit they enforce (docs/decisions.md, "Limits in the documents")."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999.99")  # 12 digits, two of them after the point
MAX_ID = 2**63 - 1  # a BIGINT
# The largest integer a JSON number with a fraction or exponent (a binary float once parsed)
# names unmistakably (JavaScript's MAX_SAFE_INTEGER; I-JSON, RFC 7493, asks no more of a
# reader): `9007199254740993.0` reads as 2**53, as `9007199254740992.0` does.
EXACT_FLOAT_INTEGER = 2**53 - 1
# A price, a price bound: a JSON number, at most two decimal places. `multipleOf` means the
# decimal the number spells (JSON Schema; jsonschema-rs and Schemathesis read it so), which is
# what `_json_number` reads too (docs/decisions.md, "Prices in the documents").
PRICE_SCHEMA: dict[str, Any] = {
    "type": "number",
    "minimum": 0,
    "maximum": float(MAX_AMOUNT),
    "multipleOf": float(CENT),
}


def _json_number(value: Any) -> Any:
    # JSON has one number type; a string or boolean price is a client bug, not a price.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a JSON number")
    # repr() is the shortest text that reads back as the same float: 19.99, not 19.989999...
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _json_integer(value: Any) -> Any:
    """A JSON integer: `876`, or `876.0` (JSON Schema counts a number by its value, so a
    number with a zero fraction is an integer) up to 2**53 - 1, where a float names one."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= EXACT_FLOAT_INTEGER:
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a JSON integer")
    return value


def _named(name: str) -> str:
    # Names are stored without surrounding whitespace (str.strip's), and one of nothing else
    # is no name.
    name = name.strip()
    if not name:
        raise ValueError("must not be blank")
    return name


# Any character str.strip() keeps: a name must hold one. Written out, since a pattern's `\s`
# (ECMA-262) and Python's whitespace differ (U+001C-U+001F, U+0085, U+FEFF).
NOT_ONLY_WHITESPACE = (
    "[^\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
)

# A price as the API shows it: an exact decimal written as a JSON number (shop.jsonutil), which
# pydantic would otherwise document as a string.
Amount = Annotated[Decimal, WithJsonSchema({**PRICE_SCHEMA, "examples": [19.99]})]
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=12, decimal_places=2),
    BeforeValidator(_json_number),
    AfterValidator(lambda amount: amount.quantize(CENT)),
    # Only JSON numbers are taken (not the strings pydantic's Decimal would document).
    WithJsonSchema(
        {**PRICE_SCHEMA, "description": "At most two decimal places.", "examples": [19.99]}
    ),
]
# The bounds come before the validator that lets only JSON integers through, so that they
# constrain the integer (and appear in the OpenAPI document as `minimum`/`maximum`).
Quantity = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_json_integer)]
Stock = Annotated[int, Field(ge=0, le=2_147_483_647), BeforeValidator(_json_integer)]
EntityId = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_json_integer)]
# At most 200 characters as sent, then stripped; not blank.
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=NOT_ONLY_WHITESPACE),
    AfterValidator(_named),
]
Description = Annotated[str, StringConstraints(max_length=2000)]
