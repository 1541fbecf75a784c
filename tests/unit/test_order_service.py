"""The order service's use cases through an in-memory order store (tests/unit/fakes.py):
sync batches, consumer batches, cancels, idempotent replays, and retries when twins commit."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shop.errors import Conflict, IdempotencyMismatch, InvalidInput, NotFound, OutOfStock
from shop.orders import domain
from shop.orders.domain import Order, Product
from shop.orders.models import OrderCommand, PlaceOrder
from shop.orders.service import PLACE_ATTEMPTS, OrderQuery, OrderService, order_key
from shop.settings import Orders
from tests.unit.fakes import FakeOrderStore, FakePublisher, fake_prices

PRICE = Decimal("2.50")
MOST = 100  # the service's MAX_ORDER_QUANTITY in these tests


def _store(*stocks: int | None) -> FakeOrderStore:
    """Products 1, 2, ... with these stocks (None: not tracked)."""
    return FakeOrderStore(Product(i, PRICE, stock, 1) for i, stock in enumerate(stocks, 1))


class Shop:
    """A service over a fake store, its sync worker running, and what it told the relay."""

    def __init__(self, store: FakeOrderStore) -> None:
        self.store = store
        self.kafka = FakePublisher()
        self.wakeups = 0
        self.service = OrderService(
            store,
            prices=fake_prices(store),
            publishers={"kafka": self.kafka, "rabbitmq": FakePublisher()},
            on_event=self._wake,
            settings=Orders(max_quantity=MOST),
        )

    def _wake(self) -> None:
        self.wakeups += 1

    async def place(
        self,
        product_id: int,
        quantity: int,
        *,
        user: int = 7,
        key: str | None = None,
        caller: str | None = None,
    ) -> Order:
        """A sync order for `user`, by `caller` (a token's subject; by default the user)."""
        order = PlaceOrder(user_id=user, product_id=product_id, quantity=quantity)
        who = str(user) if caller is None else caller
        return await self.service.place_order(order, caller=who, idempotency_key=key)

    async def place_all(self, *wanted: tuple[int, int]) -> list[Order | Exception]:
        """Sync orders of (product, quantity) placed at once: the worker stores them together."""
        found = await asyncio.gather(*(self.place(p, q) for p, q in wanted), return_exceptions=True)
        answers = [f for f in found if isinstance(f, Order | Exception)]
        assert len(answers) == len(wanted)
        return answers

    async def consume(self, commands: Sequence[OrderCommand]) -> list[str | None]:
        return await self.service.process_order_batch(commands)


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    running = Shop(_store(5, None))
    async with _worker(running):
        yield running


class _worker:
    def __init__(self, shop: Shop) -> None:
        self._shop = shop
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> None:
        self._task = asyncio.create_task(self._shop.service.run_sync_orders(self._stopping))

    async def __aexit__(self, *_: object) -> None:
        self._stopping.set()
        await self._task


def _command(
    product_id: int,
    quantity: int,
    *,
    key: str | None = None,
    user: int = 7,
    order_id: uuid.UUID | None = None,
    caller: str | None = "7",
) -> OrderCommand:
    return OrderCommand(
        id=order_id or uuid.uuid4(),
        user_id=user,
        product_id=product_id,
        quantity=quantity,
        channel="kafka",
        accepted_at=dt.datetime.now(dt.UTC),
        idempotency_key=key,
        caller=caller,
    )


async def test_a_sync_order_is_confirmed_priced_and_stored_with_its_events(shop: Shop) -> None:
    order = await shop.place(1, 2)
    assert (order.status, order.unit_price, order.total_price) == ("confirmed", PRICE, 2 * PRICE)
    assert shop.store.orders == {order.id: order}
    assert shop.store.stock(1) == 3
    assert shop.store.event_types() == ["order.confirmed", "product.stock_changed"]
    assert shop.wakeups == 1


async def test_sync_orders_placed_together_are_stored_in_fewer_units(shop: Shop) -> None:
    placed = await shop.place_all((1, 1), (2, 4), (1, 1), (2, 9), (1, 2))
    assert all(isinstance(p, Order) and p.status == "confirmed" for p in placed)
    assert len(shop.store.orders) == 5
    assert shop.store.stock(1) == 1
    assert shop.store.stock(2) is None  # not tracked: never refused, never changed
    assert shop.store.commits < 5


async def test_stock_running_out_mid_batch_refuses_the_rest_and_stores_none_of_them(
    shop: Shop,
) -> None:
    placed = await shop.place_all(*[(1, 2)] * 4)
    confirmed = [p for p in placed if isinstance(p, Order)]
    assert len(confirmed) == 2
    assert [type(p) for p in placed if not isinstance(p, Order)] == [OutOfStock] * 2
    assert shop.store.stock(1) == 1
    assert set(shop.store.orders) == {o.id for o in confirmed}


@settings(max_examples=30, deadline=None)
@given(
    stock=st.integers(0, 20),
    wanted=st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(1, 8)), max_size=12),
)
def test_concurrent_sync_orders_never_oversell(stock: int, wanted: list[tuple[int, int]]) -> None:
    async def run() -> None:
        shop = Shop(_store(stock, stock))
        async with _worker(shop):
            await shop.place_all(*wanted)
        for product_id in (1, 2):
            taken = sum(
                o.quantity
                for o in shop.store.orders.values()
                if o.product_id == product_id and o.status == "confirmed"
            )
            remaining = shop.store.stock(product_id)
            assert remaining is not None
            assert remaining >= 0
            assert remaining + taken == stock

    asyncio.run(run())


async def test_an_unknown_product_is_refused_and_nothing_is_stored(shop: Shop) -> None:
    with pytest.raises(InvalidInput) as refused:
        await shop.place(99, 1)
    assert refused.value.extra["errors"][0]["field"] == "product_id"
    assert shop.store.orders == {}
    assert shop.store.events == []


async def test_more_than_the_quantity_limit_is_refused_on_every_intake(shop: Shop) -> None:
    with pytest.raises(InvalidInput):
        await shop.place(2, MOST + 1)
    with pytest.raises(InvalidInput):
        await shop.service.accept_order(
            PlaceOrder(user_id=7, product_id=2, quantity=MOST + 1), channel="kafka", caller="7"
        )
    assert shop.store.units == 0
    assert shop.kafka.commands == []
    assert (await shop.place(2, MOST)).quantity == MOST


async def test_a_command_over_the_quantity_limit_is_refused_for_the_dead_letters(
    shop: Shop,
) -> None:
    # Put straight on the broker, not through intake: checked as intake checks a body.
    over, valid, at_most = _command(2, MOST + 1), _command(2, 1), _command(2, MOST)
    verdicts = await shop.consume([over, valid, at_most])
    assert verdicts[1:] == [None, None]
    assert verdicts[0] == (
        f"invalid order command: quantity: An order may be for at most {MOST} unit(s)."
    )
    assert set(shop.store.orders) == {valid.id, at_most.id}
    assert all(e.data["id"] != str(over.id) for e in shop.store.events)
    # Alone, nothing is stored at all (no unit of work).
    units = shop.store.units
    assert await shop.consume([_command(1, MOST + 1, key="k")]) == [verdicts[0]]
    assert (shop.store.units, shop.store.keys) == (units, {})


async def test_a_consumer_batch_stores_confirmed_and_rejected_orders(shop: Shop) -> None:
    batch = [_command(1, 4), _command(1, 4), _command(99, 1), _command(2, 1)]
    assert await shop.consume(batch) == [None] * 4
    stored = [shop.store.orders[c.id] for c in batch]
    assert [(o.status, o.reason) for o in stored] == [
        ("confirmed", None),
        ("rejected", domain.OUT_OF_STOCK),
        ("rejected", domain.UNKNOWN_PRODUCT),
        ("confirmed", None),
    ]
    assert [o.channel for o in stored] == ["kafka"] * 4
    assert shop.store.stock(1) == 1
    assert shop.store.commits == 1


async def test_a_redelivered_batch_changes_nothing(shop: Shop) -> None:
    batch = [_command(1, 1), _command(1, 1)]
    await shop.consume(batch)
    before = (dict(shop.store.orders), shop.store.stock(1), len(shop.store.events))
    assert await shop.consume(batch) == [None, None]
    assert (shop.store.orders, shop.store.stock(1), len(shop.store.events)) == before


async def test_cancel_gives_the_stock_back_and_emits_its_events(shop: Shop) -> None:
    order = await shop.place(1, 3)
    cancelled = await shop.service.cancel_order(order.id, owner=7)
    assert (cancelled.id, cancelled.status, cancelled.version) == (order.id, "cancelled", 2)
    assert shop.store.orders[order.id] == cancelled
    assert shop.store.stock(1) == 5
    assert shop.store.event_types()[-2:] == ["order.cancelled", "product.stock_changed"]
    with pytest.raises(Conflict):
        await shop.service.cancel_order(order.id, owner=None)
    assert shop.store.stock(1) == 5


async def test_another_users_order_is_not_found_to_read_or_cancel(shop: Shop) -> None:
    order = await shop.place(1, 1, user=7)
    for owner in (8, 9):
        with pytest.raises(NotFound):
            await shop.service.get_order(order.id, owner=owner)
        with pytest.raises(NotFound):
            await shop.service.cancel_order(order.id, owner=owner)
    assert shop.store.orders[order.id].status == "confirmed"
    assert await shop.service.get_order(order.id, owner=None) == order
    with pytest.raises(NotFound):
        await shop.service.cancel_order(uuid.uuid4(), owner=None)


async def test_a_page_of_orders_names_the_next(shop: Shop) -> None:
    for user in (7, 8, 7, 7):
        await shop.place(2, 1, user=user)
    mine = sorted((o for o in shop.store.orders.values() if o.user_id == 7), key=lambda o: o.id)
    page, cursor = await shop.service.list_orders(OrderQuery(limit=2, user_id=7))
    assert page == mine[:2]
    assert cursor == str(mine[1].id)
    page, cursor = await shop.service.list_orders(OrderQuery(limit=2, user_id=7, cursor=cursor))
    assert page == mine[2:]
    assert cursor is None
    with pytest.raises(InvalidInput):
        await shop.service.list_orders(OrderQuery(cursor="p0"))


async def test_a_sync_retry_under_its_key_replays_the_order(shop: Shop) -> None:
    first = await shop.place(1, 2, key="k")
    assert await shop.place(1, 2, key="k") == first
    with pytest.raises(IdempotencyMismatch):
        await shop.place(1, 3, key="k")
    assert shop.store.orders == {first.id: first}
    assert shop.store.stock(1) == 3
    assert (await shop.place(1, 2, key="k", user=8)).id != first.id  # keys are per user


async def test_async_retries_under_one_key_are_one_order(shop: Shop) -> None:
    body = PlaceOrder(user_id=7, product_id=1, quantity=2)
    first = await shop.service.accept_order(body, channel="kafka", caller="7", idempotency_key="k")
    again = await shop.service.accept_order(body, channel="kafka", caller="7", idempotency_key="k")
    assert again == first
    other = PlaceOrder(user_id=7, product_id=1, quantity=3)
    with pytest.raises(IdempotencyMismatch):
        await shop.service.accept_order(other, channel="kafka", caller="7", idempotency_key="k")
    assert await shop.consume(shop.kafka.commands) == [None, None]
    assert list(shop.store.orders) == [first.id]
    assert shop.store.stock(1) == 3


async def test_a_key_is_the_callers_for_the_orders_user(shop: Shop) -> None:
    # User 7 and an admin ordering for user 7 pick the same key: two orders, each replayed.
    own = await shop.place(2, 1, key="k")
    by_admin = await shop.place(2, 1, key="k", caller="support")
    assert own.id != by_admin.id
    assert own.user_id == by_admin.user_id == 7
    assert await shop.place(2, 1, key="k") == own
    assert await shop.place(2, 1, key="k", caller="support") == by_admin
    # The admin's key for user 7 is not theirs for user 8 either.
    for_8 = await shop.place(2, 1, key="k", user=8, caller="support")
    assert for_8.id not in (own.id, by_admin.id)
    # Same key, another body: refused for that caller and user alone.
    with pytest.raises(IdempotencyMismatch):
        await shop.place(2, 2, key="k", caller="support")
    assert (await shop.place(2, 2, key="k", caller="another-admin")).quantity == 2
    assert len(shop.store.orders) == 4


async def test_async_keys_are_the_callers_for_the_orders_user_through_the_broker(
    shop: Shop,
) -> None:
    body = PlaceOrder(user_id=7, product_id=1, quantity=2)

    async def accept(caller: str, order: PlaceOrder = body) -> uuid.UUID:
        accepted = await shop.service.accept_order(
            order, channel="kafka", caller=caller, idempotency_key="k"
        )
        return accepted.id

    own, by_admin = await accept("7"), await accept("support")
    assert own != by_admin
    assert await accept("7") == own  # a retry is given the first id
    with pytest.raises(IdempotencyMismatch):
        await accept("support", PlaceOrder(user_id=7, product_id=1, quantity=3))
    # Through the broker's bytes: the consumer scopes the key as intake did.
    sent = [OrderCommand.model_validate_json(c.model_dump_json()) for c in shop.kafka.commands]
    assert [c.caller for c in sent] == ["7", "support", "7"]
    assert await shop.consume(sent) == [None, None, None]
    assert set(shop.store.orders) == {own, by_admin}
    assert shop.store.stock(1) == 1


async def test_a_command_without_a_caller_finds_the_key_an_older_intake_claimed(
    shop: Shop,
) -> None:
    """Published before intake named the caller: its key was claimed for the user alone."""
    claimed = uuid.uuid4()
    old_key = order_key(None, 7, "k")
    assert old_key is not None
    shop.store.keys[old_key] = domain.KeyClaim(claimed, 1, 2)
    old, retry = _command(1, 2, key="k", caller=None), _command(1, 2, key="k", caller=None)
    assert await shop.consume([old, retry]) == [None, None]
    assert list(shop.store.orders) == [claimed]
    assert await shop.service.get_order(old.id, owner=7) == shop.store.orders[claimed]
    # The same key sent now by user 7 is another key: theirs, for user 7.
    assert (await shop.place(1, 2, key="k")).id != claimed


@given(
    first=st.tuples(st.one_of(st.none(), st.text(max_size=4)), st.integers(1, 30), st.text()),
    second=st.tuples(st.one_of(st.none(), st.text(max_size=4)), st.integers(1, 30), st.text()),
)
def test_keys_of_different_callers_users_or_texts_never_meet(
    first: tuple[str | None, int, str], second: tuple[str | None, int, str]
) -> None:
    assert (order_key(*first) == order_key(*second)) == (first == second)


def test_a_caller_any_text_at_all_scopes_a_key() -> None:
    assert order_key("1", 23, "k") != order_key("12", 3, "k")
    assert order_key("\ud800", 1, "k") != order_key("\udc00", 1, "k")  # lone surrogates too
    assert order_key("7", 7, None) is None


async def test_an_async_twin_that_missed_the_claim_is_stored_as_an_alias(shop: Shop) -> None:
    # Intake could not claim the key (the database was slow): the twin got an id of its own.
    first, twin = _command(1, 2, key="k"), _command(1, 2, key="k")
    assert await shop.consume([first, twin]) == [None, None]
    assert list(shop.store.orders) == [first.id]
    assert await shop.service.get_order(twin.id, owner=7) == shop.store.orders[first.id]
    assert shop.store.stock(1) == 3


async def test_a_command_reusing_a_key_for_another_order_is_rejected_for_its_client(
    shop: Shop,
) -> None:
    first, other = _command(1, 2, key="k"), _command(1, 3, key="k")
    await shop.consume([first, other])
    assert shop.store.orders[other.id].reason == domain.KEY_REUSED
    assert shop.store.stock(1) == 3


def _twin_commits(order_id: uuid.UUID, key: str | None) -> Callable[[FakeOrderStore], None]:
    """A hook: another process stores order `order_id` (under `key`) between load and save."""

    def commit(store: FakeOrderStore) -> None:
        request = domain.OrderRequest(order_id, 7, 1, 1, "kafka", order_key("7", 7, key))
        known = domain.Known(products={1: store.products[1]})
        store.commit(domain.place_orders([request], known, now=dt.datetime(2026, 12, 6)))

    return commit


async def test_a_command_whose_twin_commits_meanwhile_is_replayed_not_stored_twice(
    shop: Shop,
) -> None:
    command = _command(1, 1)
    shop.store.meanwhile.append(_twin_commits(command.id, None))
    assert await shop.consume([command]) == [None]
    assert list(shop.store.orders) == [command.id]
    assert shop.store.stock(1) == 4  # taken once
    assert shop.store.units == 2


async def test_a_sync_order_whose_key_a_twin_takes_meanwhile_gets_that_order(shop: Shop) -> None:
    twin_id = uuid.uuid4()
    shop.store.meanwhile.append(_twin_commits(twin_id, "k"))
    placed = await shop.place(1, 1, key="k")
    assert placed.id == twin_id
    assert list(shop.store.orders) == [twin_id]


async def test_conflicts_that_never_settle_end_after_a_bounded_number_of_tries(
    shop: Shop,
) -> None:
    shop.store.conflicts = 10**6
    [reason] = await shop.consume([_command(1, 1)])
    assert reason is not None
    assert reason.startswith("refused by the database")
    assert shop.store.units == PLACE_ATTEMPTS
    assert shop.store.orders == {}


async def test_a_sync_order_meeting_committed_twins_gets_its_order(shop: Shop) -> None:
    shop.store.conflicts = PLACE_ATTEMPTS - 1
    order = await shop.place(1, 1)
    assert shop.store.orders == {order.id: order}
    assert shop.store.units == PLACE_ATTEMPTS
