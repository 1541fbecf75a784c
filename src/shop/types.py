"""Field types shared by the request schemas: strict, so wrong JSON types are refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

CENT = Decimal("0.01")


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


Money = Annotated[
    Decimal,
    BeforeValidator(_json_number),
    Field(ge=0, max_digits=12, decimal_places=2, examples=[19.99]),
    AfterValidator(lambda amount: amount.quantize(CENT)),
]
Quantity = Annotated[int, BeforeValidator(_json_integer), Field(ge=1, le=1_000_000)]
Stock = Annotated[int, BeforeValidator(_json_integer), Field(ge=0, le=2_147_483_647)]
EntityId = Annotated[int, BeforeValidator(_json_integer), Field(ge=1, le=2**63 - 1)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=2000)]
