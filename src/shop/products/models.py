"""The product service's request and response shapes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.json_schema import SkipJsonSchema

from shop.fields import Amount, Description, Money, Name, Stock


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProductCreate(_Input):
    """A new product; `stock` null (the default) means stock is not tracked."""

    name: Name
    description: Description = ""
    price: Money
    stock: Stock | None = None


class ProductReplace(ProductCreate):
    """A full replacement (PUT): omitted optional fields return to their defaults."""


class ProductPatch(_Input):
    """A partial update: only the fields present change; `stock: null` stops tracking stock."""

    # Null is refused for these (below), so the document does not offer it.
    name: Name | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    price: Money | SkipJsonSchema[None] = None
    stock: Stock | None = None

    @field_validator("name", "description", "price", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null; omit the field to leave it unchanged")
        return value

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class Product(BaseModel):
    """A product as the API shows it."""

    id: int
    name: str
    description: str
    price: Amount
    stock: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
