"""The order decision core: placing batches and cancelling, by example and by its invariants."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shop.access.verifier import Forbidden
from shop.errors import Conflict, InvalidInput, NotFound
from shop.events import Event
from shop.orders import models
from shop.orders.domain import (
    KEY_REUSED,
    MAX_TOTAL,
    OUT_OF_STOCK,
    TOTAL_TOO_LARGE,
    UNKNOWN_PRODUCT,
    Channel,
    Decision,
    KeyClaim,
    KeyMismatch,
    Known,
    Order,
    OrderRequest,
    Outcome,
    Placed,
    Product,
    Refused,
    Replayed,
    Status,
    cancel_order,
    check_quantity,
    listed_user,
    order_view,
    place_orders,
    same_order,
    total_too_large,
    visible,
)

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)
HIGHEST_PRICE = Decimal("9999999999.99")  # the largest price a product may have
ASYNC_CHANNELS: tuple[Channel, ...] = ("kafka", "rabbitmq")
REASONS = {OUT_OF_STOCK, UNKNOWN_PRODUCT, TOTAL_TOO_LARGE, KEY_REUSED}


def _product(
    product_id: int = 1,
    *,
    price: Decimal = Decimal("19.99"),
    stock: int | None = 10,
    version: int = 1,
) -> Product:
    return Product(id=product_id, price=price, stock=stock, version=version)


def _request(
    product_id: int = 1,
    quantity: int = 1,
    *,
    channel: Channel = "sync",
    key: bytes | None = None,
    order_id: uuid.UUID | None = None,
) -> OrderRequest:
    return OrderRequest(
        order_id=order_id or uuid.uuid4(),
        user_id=7,
        product_id=product_id,
        quantity=quantity,
        channel=channel,
        key=key,
    )


def _known(*products: Product) -> Known:
    return Known(products={p.id: p for p in products})


def _apply(known: Known, decision: Decision) -> Known:
    """What the store holds after `decision` is written: the repository's job, done in memory."""
    orders = dict(known.orders)
    orders.update((order.id, order) for order in decision.orders)
    for alias, order_id in decision.aliases.items():
        orders[alias] = orders[order_id]
    # An alias or a key names an order by id, so it reads the order's current row.
    orders = {order_id: orders[order.id] for order_id, order in orders.items()}
    claims = dict(known.claims)
    for key, order_id in decision.keys.items():
        claims[key] = KeyClaim(order_id, orders[order_id].product_id, orders[order_id].quantity)
    products = {**known.products, **decision.products}
    return Known(orders=orders, products=products, claims=claims)


def _place(requests: Sequence[OrderRequest], known: Known) -> Decision:
    return place_orders(requests, known, now=NOW)


def _placed(outcome: Outcome) -> Order:
    assert isinstance(outcome, Placed), outcome
    return outcome.order


def _stock_events(decision: Decision) -> list[Event]:
    return [e for e in decision.events if e.aggregate == "product"]


def _stores_nothing(decision: Decision) -> bool:
    return not (
        decision.orders or decision.keys or decision.aliases or decision.products or decision.events
    )


# Placing: the rules, one example each


def test_sync_order_with_enough_stock_is_confirmed_at_the_products_price() -> None:
    request = _request(quantity=3)

    decision = _place([request], _known(_product(price=Decimal("19.99"), stock=10, version=4)))

    order = _placed(decision.outcomes[0])
    assert (order.id, order.status, order.reason) == (request.order_id, "confirmed", None)
    assert (order.unit_price, order.total_price) == (Decimal("19.99"), Decimal("59.97"))
    assert (order.version, order.created_at, order.updated_at) == (1, NOW, NOW)
    assert decision.orders == [order]
    assert decision.products == {1: _product(price=Decimal("19.99"), stock=7, version=5)}
    assert decision.events == [
        Event("order", "order.confirmed", str(order.id), 1, order_view(order)),
        Event("product", "product.stock_changed", "1", 5, {"id": 1, "stock": 7}),
    ]


def test_orders_taking_one_products_stock_in_a_batch_emit_one_event_with_its_final_state() -> None:
    decision = _place([_request(quantity=2), _request(quantity=5)], _known(_product(stock=10)))

    assert [_placed(o).status for o in decision.outcomes] == ["confirmed", "confirmed"]
    # one change of the product (its one event), one version more: so versions are consecutive
    assert [(e.version, e.data) for e in _stock_events(decision)] == [(2, {"id": 1, "stock": 3})]


@pytest.mark.parametrize("channel", ["sync", "kafka", "rabbitmq"])
def test_untracked_stock_always_confirms_and_emits_no_product_event(channel: Channel) -> None:
    decision = _place(
        [_request(quantity=1_000_000, channel=channel)], _known(_product(stock=None, version=3))
    )

    order = _placed(decision.outcomes[0])
    assert (order.status, order.total_price) == ("confirmed", Decimal("19990000.00"))
    assert decision.products == {}
    assert [e.type for e in decision.events] == ["order.confirmed"]


REFUSALS = [
    pytest.param(_product(stock=1), 1, 2, OUT_OF_STOCK, id="out-of-stock"),
    pytest.param(_product(stock=None), 2, 1, UNKNOWN_PRODUCT, id="unknown-product"),
    pytest.param(
        _product(price=HIGHEST_PRICE, stock=None), 1, 101, TOTAL_TOO_LARGE, id="total-too-large"
    ),
    pytest.param(
        _product(price=HIGHEST_PRICE, stock=1000),
        1,
        101,
        TOTAL_TOO_LARGE,
        id="total-too-large-tracked",
    ),
]


@pytest.mark.parametrize(("product", "product_id", "quantity", "reason"), REFUSALS)
def test_a_sync_order_that_cannot_be_placed_is_refused_and_nothing_is_stored(
    product: Product, product_id: int, quantity: int, reason: str
) -> None:
    request = _request(product_id, quantity, key=b"key")

    decision = _place([request], _known(product))

    assert decision.outcomes == [Refused(reason, product_id, quantity)]
    assert _stores_nothing(decision)


@pytest.mark.parametrize("channel", ASYNC_CHANNELS)
@pytest.mark.parametrize(("product", "product_id", "quantity", "reason"), REFUSALS)
def test_an_async_order_that_cannot_be_placed_is_stored_rejected_with_its_reason(
    channel: Channel, product: Product, product_id: int, quantity: int, reason: str
) -> None:
    request = _request(product_id, quantity, channel=channel, key=b"key")

    decision = _place([request], _known(product))

    order = _placed(decision.outcomes[0])
    assert (order.id, order.status, order.reason) == (request.order_id, "rejected", reason)
    assert (order.unit_price, order.total_price, order.channel) == (None, None, channel)
    assert decision.orders == [order]
    assert decision.keys == {b"key": request.order_id}
    assert decision.products == {}
    assert decision.events == [
        Event("order", "order.rejected", str(order.id), 1, order_view(order))
    ]


@pytest.mark.parametrize("channel", ["sync", "kafka", "rabbitmq"])
def test_quantity_100_at_the_highest_price_is_placed(channel: Channel) -> None:
    decision = _place(
        [_request(quantity=100, channel=channel)], _known(_product(price=HIGHEST_PRICE, stock=100))
    )

    order = _placed(decision.outcomes[0])
    assert order.status == "confirmed"
    assert order.total_price == Decimal("999999999999.00") <= MAX_TOTAL
    assert not total_too_large(HIGHEST_PRICE, 100)
    assert total_too_large(HIGHEST_PRICE, 101)


def test_a_refused_order_in_a_batch_does_not_affect_its_neighbours() -> None:
    known = _known(_product(1, stock=5), _product(2, price=HIGHEST_PRICE, stock=None))
    requests = [
        _request(1, 2),
        _request(2, 101),  # total too large
        _request(1, 2),
        _request(1, 2),  # out of stock: 1 left
        _request(3, 1),  # unknown product
        _request(1, 1),
        _request(2, 100),
    ]

    decision = _place(requests, known)

    assert [type(o) for o in decision.outcomes] == [
        Placed,
        Refused,
        Placed,
        Refused,
        Refused,
        Placed,
        Placed,
    ]
    assert [o.id for o in decision.orders] == [requests[i].order_id for i in (0, 2, 5, 6)]
    assert decision.products == {1: _product(1, stock=0, version=2)}


def test_a_redelivered_id_is_replayed_with_no_change() -> None:
    request = _request(quantity=2, channel="kafka")
    known = _apply(_known(_product(stock=10)), _place([request], _known(_product(stock=10))))

    decision = _place([request], known)

    assert decision.outcomes == [Replayed(known.orders[request.order_id])]
    assert _stores_nothing(decision)


def test_an_id_repeated_in_one_batch_takes_stock_once() -> None:
    request = _request(quantity=2, channel="rabbitmq")

    decision = _place([request, request], _known(_product(stock=10)))

    order = _placed(decision.outcomes[0])
    assert decision.outcomes[1] == Replayed(order)
    assert decision.orders == [order]
    assert decision.products[1].stock == 8


def test_the_same_key_and_the_same_sync_request_is_replayed() -> None:
    first = _request(quantity=2, key=b"key")
    known = _apply(_known(_product()), _place([first], _known(_product())))

    decision = _place([_request(quantity=2, key=b"key")], known)

    assert decision.outcomes == [Replayed(known.orders[first.order_id])]
    assert _stores_nothing(decision)


@pytest.mark.parametrize("channel", ASYNC_CHANNELS)
def test_the_same_key_and_the_same_async_request_is_replayed_and_its_id_aliases_the_first(
    channel: Channel,
) -> None:
    first = _request(quantity=2, channel="sync", key=b"key")
    known = _apply(_known(_product()), _place([first], _known(_product())))
    original = known.orders[first.order_id]
    retry = _request(quantity=2, channel=channel, key=b"key")

    decision = _place([retry], known)

    assert decision.outcomes == [Replayed(original)]
    assert decision.aliases == {retry.order_id: first.order_id}
    assert (decision.orders, decision.keys, decision.products, decision.events) == ([], {}, {}, [])
    # The id the retry's 202 named finds the first order.
    redelivered = _place([retry], _apply(known, decision))
    assert redelivered.outcomes == [Replayed(original)]
    assert _stores_nothing(redelivered)


def test_the_same_key_with_a_different_sync_request_is_a_key_mismatch() -> None:
    first = _request(quantity=2, key=b"key")
    known = _apply(_known(_product()), _place([first], _known(_product())))

    decision = _place([_request(quantity=3, key=b"key")], known)

    assert decision.outcomes == [KeyMismatch(known.orders[first.order_id])]
    assert _stores_nothing(decision)


@pytest.mark.parametrize("channel", ASYNC_CHANNELS)
def test_the_same_key_with_a_different_async_request_is_stored_rejected_as_key_reused(
    channel: Channel,
) -> None:
    first = _request(quantity=2, channel=channel, key=b"key")
    known = _apply(_known(_product()), _place([first], _known(_product())))
    other = _request(quantity=3, channel=channel, key=b"key")

    decision = _place([other], known)

    order = _placed(decision.outcomes[0])
    assert (order.id, order.status, order.reason) == (other.order_id, "rejected", KEY_REUSED)
    assert (order.unit_price, order.total_price) == (None, None)
    assert decision.keys == {}  # the key still names the first order
    assert decision.products == {}  # and no stock was taken
    assert _apply(known, decision).claims[b"key"].order_id == first.order_id


@pytest.mark.parametrize("channel", ASYNC_CHANNELS)
def test_a_rejected_async_orders_key_replays_the_rejection(channel: Channel) -> None:
    first = _request(quantity=20, channel=channel, key=b"key")
    known = _apply(_known(_product(stock=10)), _place([first], _known(_product(stock=10))))
    rejected = known.orders[first.order_id]
    assert rejected.reason == OUT_OF_STOCK
    retry = _request(quantity=20, channel=channel, key=b"key")

    decision = _place([retry], known)

    assert decision.outcomes == [Replayed(rejected)]
    assert decision.aliases == {retry.order_id: first.order_id}


def _claimed(product: Product, quantity: int) -> tuple[Known, KeyClaim]:
    """A key async intake gave an order id to, before that order was stored."""
    claim = KeyClaim(uuid.uuid4(), product.id, quantity)
    return Known(products={product.id: product}, claims={b"key": claim}), claim


@pytest.mark.parametrize("channel", ["sync", "kafka", "rabbitmq"])
def test_a_request_under_a_claimed_key_is_placed_under_the_claimed_id(channel: Channel) -> None:
    known, claim = _claimed(_product(stock=10), 2)
    request = _request(quantity=2, channel=channel, key=b"key")

    decision = _place([request], known)

    order = _placed(decision.outcomes[0])
    assert (order.id, order.status, order.channel) == (claim.order_id, "confirmed", channel)
    assert decision.keys == {}  # intake recorded the key with its claim
    assert decision.aliases == ({} if channel == "sync" else {request.order_id: claim.order_id})
    assert decision.products[1].stock == 8
    after = _apply(known, decision)
    assert after.claims == {b"key": claim}  # and the claimed order is now stored
    assert after.orders[claim.order_id] == order
    claimed_command = _request(quantity=2, channel="kafka", key=b"key", order_id=claim.order_id)
    assert _place([request, claimed_command], after).outcomes == [Replayed(order)] * 2


def test_the_claimed_command_itself_is_placed_under_its_own_id() -> None:
    known, claim = _claimed(_product(stock=10), 2)
    command = _request(quantity=2, channel="kafka", key=b"key", order_id=claim.order_id)

    decision = _place([command, command], known)

    order = _placed(decision.outcomes[0])
    assert (order.id, decision.outcomes[1]) == (claim.order_id, Replayed(order))
    assert (decision.keys, decision.aliases) == ({}, {})
    assert decision.products[1].stock == 8


def test_a_sync_request_under_a_claimed_key_that_is_refused_leaves_the_claim() -> None:
    known, claim = _claimed(_product(stock=1), 2)

    decision = _place([_request(quantity=2, key=b"key")], known)

    assert decision.outcomes == [Refused(OUT_OF_STOCK, 1, 2)]
    assert _stores_nothing(decision)
    assert _apply(known, decision).claims == {b"key": claim}


def test_a_different_sync_request_under_a_claimed_key_is_a_key_mismatch() -> None:
    known, _ = _claimed(_product(), 2)

    decision = _place([_request(quantity=3, key=b"key")], known)

    assert decision.outcomes == [KeyMismatch(None)]
    assert _stores_nothing(decision)


@pytest.mark.parametrize("channel", ASYNC_CHANNELS)
def test_a_different_async_request_under_a_claimed_key_is_stored_rejected_as_key_reused(
    channel: Channel,
) -> None:
    known, claim = _claimed(_product(), 2)
    other = _request(quantity=3, channel=channel, key=b"key")

    decision = _place([other], known)

    order = _placed(decision.outcomes[0])
    assert (order.id, order.reason) == (other.order_id, KEY_REUSED)
    assert (decision.keys, decision.aliases, decision.products) == ({}, {}, {})
    assert _apply(known, decision).claims == {b"key": claim}


# Cancelling


def _confirmed_order(product: Product, quantity: int) -> Order:
    return _placed(_place([_request(product.id, quantity)], _known(product)).outcomes[0])


def test_cancelling_a_confirmed_order_gives_its_units_back_to_tracked_stock() -> None:
    order = _confirmed_order(_product(stock=10), 4)
    product = _product(stock=6, version=2)

    decision = cancel_order(order.id, order, product, owner=None, now=LATER)

    cancelled = dataclasses.replace(order, status="cancelled", updated_at=LATER, version=2)
    assert decision.outcomes == [Placed(cancelled)]
    assert decision.changed == [cancelled]
    assert decision.orders == []
    assert decision.products == {1: _product(stock=10, version=3)}
    assert decision.events == [
        Event("order", "order.cancelled", str(order.id), 2, order_view(cancelled)),
        Event("product", "product.stock_changed", "1", 3, {"id": 1, "stock": 10}),
    ]


@pytest.mark.parametrize("product", [_product(stock=None), None], ids=["untracked", "deleted"])
def test_cancelling_an_order_without_tracked_stock_changes_no_product(
    product: Product | None,
) -> None:
    order = _confirmed_order(_product(stock=None), 4)

    decision = cancel_order(order.id, order, product, owner=None, now=LATER)

    assert _placed(decision.outcomes[0]).status == "cancelled"
    assert decision.products == {}
    assert [e.type for e in decision.events] == ["order.cancelled"]


def test_cancelling_no_order_is_not_found() -> None:
    with pytest.raises(NotFound):
        cancel_order(uuid.uuid4(), None, _product(), owner=None, now=LATER)


def test_another_users_order_is_not_found_and_its_owners_cancels() -> None:
    order = _confirmed_order(_product(), 1)  # user 7's
    with pytest.raises(NotFound):
        cancel_order(order.id, order, _product(), owner=8, now=LATER)
    assert cancel_order(order.id, order, _product(), owner=7, now=LATER).changed[0].id == order.id


def test_an_order_is_visible_to_its_owner_and_an_admin_only() -> None:
    order = _confirmed_order(_product(), 1)  # user 7's
    assert visible(order.id, order, 7) is visible(order.id, order, None) is order
    for owner, found in ((8, order), (7, None), (None, None)):
        with pytest.raises(NotFound):
            visible(order.id, found, owner)


def test_a_customer_lists_only_their_own_orders() -> None:
    assert listed_user(7, None) == 7
    assert listed_user(7, 7) == 7
    with pytest.raises(Forbidden):
        listed_user(7, 8)


@pytest.mark.parametrize("user_id", [None, 7, 8])
def test_an_admin_lists_the_orders_it_asks_for(user_id: int | None) -> None:
    assert listed_user(None, user_id) == user_id


def test_two_requests_are_the_same_order_when_product_and_quantity_match() -> None:
    claim = KeyClaim(uuid.uuid4(), 1, 2)
    assert same_order(claim, _request(1, 2, channel="kafka"))
    assert not same_order(claim, _request(1, 3))
    assert not same_order(claim, _request(2, 2))


def test_the_quantity_limit_is_inclusive() -> None:
    check_quantity(5, most=5)
    with pytest.raises(InvalidInput):
        check_quantity(6, most=5)


@pytest.mark.parametrize("status", ["rejected", "cancelled"])
def test_only_a_confirmed_order_cancels(status: Status) -> None:
    order = dataclasses.replace(_confirmed_order(_product(), 1), status=status)

    with pytest.raises(Conflict):
        cancel_order(order.id, order, _product(), owner=None, now=LATER)


def test_order_view_has_exactly_the_fields_of_the_api_model() -> None:
    order = _confirmed_order(_product(), 2)

    assert set(order_view(order)) == set(models.Order.model_fields)
    assert models.Order.model_validate(order_view(order)).id == order.id


# Invariants, over generated batches

KEYS = [b"key-a", b"key-b", b"key-c"]
PRICES = [Decimal("0.00"), Decimal("0.01"), Decimal("19.99"), HIGHEST_PRICE]


@dataclasses.dataclass(frozen=True)
class Scenario:
    known: Known
    requests: list[OrderRequest]


prices: st.SearchStrategy[Decimal] = st.one_of(
    st.sampled_from(PRICES),
    st.decimals(min_value=0, max_value=HIGHEST_PRICE, places=2),
)
stocks: st.SearchStrategy[int | None] = st.one_of(
    st.none(), st.integers(0, 10), st.integers(0, 2_000_000)
)
quantities: st.SearchStrategy[int] = st.one_of(st.integers(1, 5), st.integers(1, 1_000_000))
channels: st.SearchStrategy[Channel] = st.sampled_from(["sync", "kafka", "rabbitmq"])


@st.composite
def products(draw: st.DrawFn, product_id: int) -> Product:
    return Product(product_id, draw(prices), draw(stocks), draw(st.integers(1, 5)))


@st.composite
def claims(draw: st.DrawFn) -> dict[bytes, KeyClaim]:
    """Keys that async intake gave an order id to, whose orders are not stored yet."""
    return {
        key: KeyClaim(uuid.UUID(int=1000 + i), draw(st.integers(1, 4)), draw(quantities))
        for i, key in enumerate(KEYS)
        if draw(st.booleans())
    }


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Products 1-3 (some missing), some keys claimed, and requests for products 1-4: new ones,
    redeliveries, retries (a new id for an earlier body and key) and claimed commands."""
    catalogue = [draw(products(pid)) for pid in (1, 2, 3) if draw(st.booleans())]
    claimed = draw(claims())
    kinds = ["new", "redelivery", "retry", *(["claimed"] if claimed else [])]
    requests: list[OrderRequest] = []
    for n in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(kinds)) if requests else "new"
        if kind == "claimed":
            key, claim = draw(st.sampled_from(sorted(claimed.items())))
            channel = draw(st.sampled_from(ASYNC_CHANNELS))
            requests.append(
                OrderRequest(claim.order_id, 7, claim.product_id, claim.quantity, channel, key)
            )
        elif kind == "redelivery":
            requests.append(draw(st.sampled_from(requests)))
        elif kind == "retry":  # a new id for an earlier body, with its key: the client retried
            earlier = draw(st.sampled_from(requests))
            requests.append(
                dataclasses.replace(earlier, order_id=uuid.UUID(int=n + 1), channel=draw(channels))
            )
        else:
            requests.append(
                OrderRequest(
                    order_id=uuid.UUID(int=n + 1),
                    user_id=7,
                    product_id=draw(st.integers(1, 4)),
                    quantity=draw(quantities),
                    channel=draw(channels),
                    key=draw(st.none() | st.sampled_from(KEYS)),
                )
            )
    known = Known(products={p.id: p for p in catalogue}, claims=claimed)
    return Scenario(known, requests)


def _order_summary(order: Order | None) -> tuple[object, ...]:
    if order is None:
        return ()
    return (order.id, order.status, order.reason, order.unit_price, order.total_price)


def _outcome_summary(outcome: Outcome) -> tuple[str, object]:
    if isinstance(outcome, Refused):
        return ("Refused", outcome.reason)
    return (type(outcome).__name__, _order_summary(outcome.order))


def _decide_in_batches(
    known: Known, requests: Sequence[OrderRequest], cuts: Sequence[bool]
) -> tuple[list[Outcome], list[Order], Known]:
    """Decide `requests` cut after each index whose flag is set, storing each batch's decision."""
    outcomes: list[Outcome] = []
    orders: list[Order] = []
    batch: list[OrderRequest] = []
    for request, cut in zip(requests, [*cuts, True], strict=True):
        batch.append(request)
        if cut:
            decision = _place(batch, known)
            known = _apply(known, decision)
            outcomes += decision.outcomes
            orders += decision.orders
            batch = []
    return outcomes, orders, known


FAST = settings(max_examples=100, deadline=None)


@FAST
@given(scenarios())
def test_stock_never_goes_negative(scenario: Scenario) -> None:
    decision = _place(scenario.requests, scenario.known)

    after = _apply(scenario.known, decision)
    assert all(p.stock is None or p.stock >= 0 for p in after.products.values())


@FAST
@given(scenarios())
def test_units_taken_equal_units_confirmed(scenario: Scenario) -> None:
    decision = _place(scenario.requests, scenario.known)

    assert len({o.id for o in decision.orders}) == len(decision.orders)  # each stored once
    after = _apply(scenario.known, decision)
    for pid, before in scenario.known.products.items():
        confirmed = [o for o in decision.orders if o.product_id == pid and o.status == "confirmed"]
        if before.stock is None:
            assert pid not in decision.products
            continue
        final = after.products[pid]
        assert before.stock - (final.stock or 0) == sum(o.quantity for o in confirmed)
        # the batch's units taken are one change: one version more if any were taken
        assert final.version - before.version == (1 if confirmed else 0)


@FAST
@given(scenarios())
def test_an_idempotency_key_places_at_most_one_order(scenario: Scenario) -> None:
    decision = _place(scenario.requests, scenario.known)

    keyed = [
        (request.key, outcome.order.id)
        for request, outcome in zip(scenario.requests, decision.outcomes, strict=True)
        if request.key is not None
        and isinstance(outcome, Placed)
        and outcome.order.reason != KEY_REUSED
    ]
    placed = dict(keyed)
    assert len(placed) == len(keyed)
    for key, order_id in placed.items():
        claim = scenario.known.claims.get(key)
        if claim is None:
            assert decision.keys[key] == order_id
        else:  # intake recorded the key already, with the id its order must have
            assert (order_id, key in decision.keys) == (claim.order_id, False)
    assert set(decision.keys) <= set(placed)


@FAST
@given(scenarios())
def test_replaying_a_batch_changes_nothing(scenario: Scenario) -> None:
    first = _place(scenario.requests, scenario.known)
    after = _apply(scenario.known, first)

    again = _place(scenario.requests, after)

    assert _stores_nothing(again)
    for before, now in zip(first.outcomes, again.outcomes, strict=True):
        if isinstance(before, Refused):  # a later request may have placed an order under its key
            assert isinstance(now, Refused | Replayed | KeyMismatch)
        elif isinstance(before, KeyMismatch):  # None: the key's claimed order was not stored
            assert isinstance(now, KeyMismatch)
            assert before.order is None or now.order == before.order
        else:
            assert now == Replayed(before.order)


def _stock(products: Mapping[int, Product]) -> dict[int, tuple[Decimal, int | None]]:
    return {pid: (p.price, p.stock) for pid, p in products.items()}


@FAST
@given(scenarios(), st.data())
def test_outcome_does_not_depend_on_how_requests_are_split_into_batches(
    scenario: Scenario, data: st.DataObject
) -> None:
    cuts = data.draw(
        st.lists(
            st.booleans(), min_size=len(scenario.requests) - 1, max_size=len(scenario.requests) - 1
        )
    )

    whole = _place(scenario.requests, scenario.known)
    outcomes, orders, split = _decide_in_batches(scenario.known, scenario.requests, cuts)

    assert list(map(_outcome_summary, outcomes)) == list(map(_outcome_summary, whole.outcomes))
    assert list(map(_order_summary, orders)) == list(map(_order_summary, whole.orders))
    in_one = _apply(scenario.known, whole)
    # The same stock; a version more per batch that took units (a published change each).
    assert _stock(split.products) == _stock(in_one.products)
    for pid, product in split.products.items():
        assert product.version >= in_one.products[pid].version
    assert split.claims == in_one.claims
    assert {i: o.id for i, o in split.orders.items()} == {i: o.id for i, o in in_one.orders.items()}


@FAST
@given(scenarios())
def test_every_stored_order_is_priced_within_bounds_or_rejected_with_a_reason(
    scenario: Scenario,
) -> None:
    decision = _place(scenario.requests, scenario.known)

    for order in decision.orders:
        assert order.version == 1
        if order.status == "confirmed":
            price = scenario.known.products[order.product_id].price
            assert order.reason is None
            assert order.unit_price == price
            assert order.total_price == price * order.quantity
            assert order.total_price <= MAX_TOTAL
        else:
            assert order.status == "rejected"
            assert order.channel != "sync"
            assert order.reason in REASONS
            assert (order.unit_price, order.total_price) == (None, None)
    assert [(e.key, e.type) for e in decision.events if e.aggregate == "order"] == [
        (str(o.id), f"order.{o.status}") for o in decision.orders
    ]
    assert [(e.version, e.data) for e in _stock_events(decision)] == [
        (p.version, {"id": p.id, "stock": p.stock}) for p in decision.products.values()
    ]
