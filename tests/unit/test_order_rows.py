"""One row shape: the domain's Order is the orders table, and the API shows what it says."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from shop.orders import domain, store
from shop.orders.models import Order as OrderModel
from shop.orders.tables import orders
from shop.storage.database import sql_literal


def test_the_domain_order_has_one_field_per_column_of_the_table() -> None:
    assert [f.name for f in dataclasses.fields(domain.Order)] == list(orders.c.keys())
    assert list(store.FIELDS) == list(orders.c.keys())


def test_the_order_view_is_the_api_model() -> None:
    fields = {f.name for f in dataclasses.fields(domain.Order)}
    view = domain.order_view(
        domain.Order(**dict.fromkeys(fields))  # type: ignore[arg-type]
    )
    assert list(view) == list(OrderModel.model_fields)


prices = st.one_of(st.none(), st.decimals(Decimal("0.01"), Decimal("9999999999.99"), places=2))
times = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2100, 1, 1))
orders_ = st.builds(
    domain.Order,
    id=st.uuids(),
    user_id=st.integers(1, 2**63 - 1),
    product_id=st.integers(1, 2**63 - 1),
    quantity=st.integers(1, 10**6),
    status=st.sampled_from(["confirmed", "rejected", "cancelled"]),
    reason=st.one_of(st.none(), st.sampled_from([domain.OUT_OF_STOCK, domain.KEY_REUSED])),
    unit_price=prices,
    total_price=prices,
    channel=st.sampled_from(["sync", "kafka", "rabbitmq"]),
    created_at=times,
    updated_at=times,
    version=st.integers(1, 3),
)


@given(orders_, st.booleans())
def test_an_orders_row_is_written_as_sql_literal_writes_each_field(
    order: domain.Order, same_times: bool
) -> None:
    if same_times:
        order = dataclasses.replace(order, updated_at=order.created_at)
    fields = [order.id.bytes, *(getattr(order, f) for f in store.FIELDS[1:])]
    assert store.order_values(order) == "(" + ", ".join(map(sql_literal, fields)) + ")"
