"""One row shape: the domain's Order is the orders table, and the API shows what it says."""

from __future__ import annotations

import dataclasses

from shop.orders import domain, repository
from shop.orders.models import Order as OrderModel
from shop.orders.tables import orders


def test_the_domain_order_has_one_field_per_column_of_the_table() -> None:
    assert [f.name for f in dataclasses.fields(domain.Order)] == list(orders.c.keys())
    assert list(repository.FIELDS) == list(orders.c.keys())


def test_the_order_view_is_the_api_model() -> None:
    fields = {f.name for f in dataclasses.fields(domain.Order)}
    view = domain.order_view(
        domain.Order(**dict.fromkeys(fields))  # type: ignore[arg-type]
    )
    assert list(view) == list(OrderModel.model_fields)
