"""Field types shared by the request schemas: strict, so wrong JSON types are refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("9999999999.99")  # 12 digits, two of them after the point


def _json_number(value: Any) -> Any:
    # JSON has one number type; a string or boolean price is a client bug, not a price.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a JSON number")
    # repr() is the shortest text that reads back as the same float: 19.99, not 19.989999...
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _json_integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a JSON integer")
    return value


# A price as the API shows it: an exact decimal written as a JSON number (shop.jsonutil), which
# pydantic would otherwise document as a string.
Amount = Annotated[Decimal, WithJsonSchema({"type": "number", "examples": [19.99]})]
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=12, decimal_places=2),
    BeforeValidator(_json_number),
    AfterValidator(lambda amount: amount.quantize(CENT)),
    # Only JSON numbers are taken (not the strings pydantic's Decimal would document), and the
    # two decimal places are said in words: `multipleOf: 0.01` misjudges binary floats.
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": float(MAX_AMOUNT),
            "description": "At most two decimal places.",
            "examples": [19.99],
        }
    ),
]
# The bounds come before the validator that lets only JSON integers through, so that they
# constrain the integer (and appear in the OpenAPI document as `minimum`/`maximum`).
Quantity = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(_json_integer)]
Stock = Annotated[int, Field(ge=0, le=2_147_483_647), BeforeValidator(_json_integer)]
EntityId = Annotated[int, Field(ge=1, le=2**63 - 1), BeforeValidator(_json_integer)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=2000)]
