"""Order use cases: place (sync), accept (async), process a batch of commands, cancel, read.

Each use case loads what the decision needs from the order store (`shop.orders.store`), lets
`shop.orders.domain` decide, and saves the decision in the same unit of work; sync orders and
consumer batches go through one path. The service returns the domain's orders (and `Accepted`
for an accepted one); the routes render them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from prometheus_client import Counter, Histogram
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from shop import jsonutil, tracing
from shop.errors import IdempotencyMismatch, InvalidInput, OutOfStock
from shop.ids import uuid7
from shop.orders import domain
from shop.orders.domain import AsyncChannel, Channel, Order, OrderRequest, Outcome
from shop.orders.models import Accepted, OrderCommand, PlaceOrder
from shop.orders.prices import Prices
from shop.orders.store import OrderStore, OrderUnit
from shop.settings import Orders
from shop.storage.group_commit import Coalescer

log = logging.getLogger(__name__)

ORDERS_ACCEPTED = Counter("orders_accepted_total", "Orders accepted at intake", ["channel"])
ORDERS_STORED = Counter("orders_stored_total", "Orders stored", ["channel", "status"])
BATCH_SIZE = Histogram(
    "order_batch_size",
    "Commands per consumer batch",
    ["channel"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)

# Tries of one batch while committed twins surface (a request meets at most three: its id,
# its key, its key's claimed order).
PLACE_ATTEMPTS = 4


class CommandPublisher(Protocol):
    """A broker that carries order commands; raises Unavailable when it does not confirm."""

    async def publish_command(self, command: OrderCommand) -> None: ...


@dataclass(frozen=True, slots=True)
class OrderQuery:
    """A page of orders in id (creation) order, optionally of one user and/or one status."""

    limit: int = 100
    cursor: str | None = None
    user_id: int | None = None
    status: str | None = None


def order_key(caller: str | None, user_id: int, idempotency_key: str | None) -> bytes | None:
    """An Idempotency-Key as stored: hashed with the caller who sent it (the token's subject)
    and the order's user, so that keys never meet across callers, nor across the users one
    caller orders for (an admin ordering for user 5 and user 5 themselves never share one).

    A `caller` of None is a command published before intake named its caller: its key was
    claimed under the user alone, and is looked up so.
    """
    if idempotency_key is None:
        return None
    if caller is None:
        scope = f"order\x1f{user_id}"
    else:  # the caller's length first: a subject may hold any character
        scope = f"order\x1f{len(caller)}:{caller}\x1f{user_id}"
    text = f"{scope}\x1f{idempotency_key}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _request(
    order_id: uuid.UUID, order: PlaceOrder, channel: Channel, key: bytes | None
) -> OrderRequest:
    return OrderRequest(order_id, order.user_id, order.product_id, order.quantity, channel, key)


def _answer(outcome: Outcome) -> Order:
    """What a sync caller is told: its order, or the refusal raised."""
    if isinstance(outcome, domain.Placed | domain.Replayed):
        return outcome.order
    if isinstance(outcome, domain.KeyMismatch):
        raise IdempotencyMismatch("This Idempotency-Key was first used with a different order.")
    if outcome.reason == domain.OUT_OF_STOCK:
        raise OutOfStock(
            f"Product {outcome.product_id} has too little stock for {outcome.quantity} unit(s)."
        )
    if outcome.reason == domain.TOTAL_TOO_LARGE:
        raise _too_large(outcome.quantity)
    raise InvalidInput(f"No product with id {outcome.product_id}.", field="product_id")


def _note(order_id: uuid.UUID, what: str) -> None:
    """The order's id on its request's span, and a debug line (with the span's trace id)."""
    tracing.annotate(order_id=order_id)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("order %s %s", order_id, what, extra={"order_id": str(order_id)})


def _traced_orders(requests: Sequence[OrderRequest]) -> dict[str, tuple[str, ...]]:
    """A group commit's span names the orders whose traces it joins (the others' ids would cost
    a traced batch 2 us each, and no search could find them in a list)."""
    return {tracing.ORDER_IDS: tracing.ids(r.order_id for r in requests)}


def _too_large(quantity: int) -> InvalidInput:
    return InvalidInput(
        f"{quantity} unit(s) at this product's price exceed the largest order total "
        f"({domain.MAX_TOTAL}).",
        field="quantity",
    )


async def _decide(requests: Sequence[OrderRequest], unit: OrderUnit) -> domain.Decision:
    """Load what the batch's decision needs, decide, and save the decision."""
    decision = domain.place_orders(requests, await unit.known(requests), now=jsonutil.utcnow())
    await unit.save(decision)
    return decision


async def _cancel(order_id: uuid.UUID, owner: int | None, unit: OrderUnit) -> domain.Decision:
    order, product = await unit.lock_order(order_id)
    decision = domain.cancel_order(order_id, order, product, owner=owner, now=jsonutil.utcnow())
    await unit.save(decision)
    return decision


class OrderService:
    """Orders, each stored with its events in one transaction."""

    def __init__(
        self,
        store: OrderStore,
        *,
        prices: Prices,
        publishers: Mapping[str, CommandPublisher],
        on_event: Callable[[], None],
        settings: Orders,
    ) -> None:
        self._store = store
        self._max_quantity = settings.max_quantity
        self._lookup_seconds = settings.intake_lookup_seconds
        self._publishers = publishers
        self._on_event = on_event
        self._sync_orders: Coalescer[OrderRequest, Outcome] = Coalescer(
            self._place_isolated,
            max_batch=200,
            max_pending=settings.sync_queue_limit,
            timeout=store.timeout,
            describe=_traced_orders,
        )
        self._prices = prices

    async def place_order(
        self, order: PlaceOrder, *, caller: str, idempotency_key: str | None = None
    ) -> Order:
        """Reserve stock and store a confirmed order now; OutOfStock when there is too little.
        `caller` (the token's subject) and the order's user scope the key.

        Concurrent calls are stored together, one transaction per batch (see group_commit).
        """
        self.check_order(order)
        key = order_key(caller, order.user_id, idempotency_key)
        placed = _answer(await self._sync_orders.submit(_request(uuid7(), order, "sync", key)))
        _note(placed.id, placed.status)
        return placed

    async def run_sync_orders(self, stopping: asyncio.Event) -> None:
        """The worker that stores batches of synchronous orders; runs until `stopping`."""
        await self._sync_orders.run(stopping)

    def check_order(self, order: PlaceOrder) -> None:
        """What an order must meet beyond its fields' types, checked at intake and again for
        every command a consumer reads: at most MAX_ORDER_QUANTITY units. InvalidInput if not."""
        domain.check_quantity(order.quantity, most=self._max_quantity)

    def _refusal(self, command: OrderCommand) -> str | None:
        """Why a command may not be placed (as its body would have been refused at intake), to
        dead-letter it with; None when it may."""
        try:
            self.check_order(command)
        except InvalidInput as exc:
            return f"invalid order command: {exc.field}: {exc.detail}"[:500]
        return None

    async def process_order_batch(self, commands: Sequence[OrderCommand]) -> list[str | None]:
        """Store a batch of commands: per command None (stored, now or before) or the reason to
        dead-letter it (intake would have refused it, or the database refuses it); a refused
        command is not stored. Raises only when the database is unreachable.
        """
        if not commands:
            return []
        BATCH_SIZE.labels(commands[0].channel).observe(len(commands))
        verdicts = [self._refusal(c) for c in commands]
        requests = [
            _request(c.id, c, c.channel, order_key(c.caller, c.user_id, c.idempotency_key))
            for c, refused in zip(commands, verdicts, strict=True)
            if refused is None
        ]
        outcomes = iter(await self._place_isolated(requests) if requests else ())
        for i, refused in enumerate(verdicts):
            if refused is None:
                outcome = next(outcomes)
                if isinstance(outcome, Exception):
                    verdicts[i] = f"refused by the database: {outcome}"[:500]
        return verdicts

    async def _place_isolated(self, requests: Sequence[OrderRequest]) -> list[Outcome | Exception]:
        """Place a batch; if the database refuses it, halve it until the refused requests are
        alone, so that one request never fails its neighbours."""
        try:
            return list(await self._place_retrying(requests))
        except (OperationalError, InterfaceError):  # not the request's fault: retried later
            raise
        except DBAPIError as exc:
            if len(requests) == 1:
                log.error("order %s refused by the database: %s", requests[0].order_id, exc)
                return [exc]
        half = len(requests) // 2
        return [
            *await self._place_isolated(requests[:half]),
            *await self._place_isolated(requests[half:]),
        ]

    async def _place_retrying(self, requests: Sequence[OrderRequest]) -> list[Outcome]:
        """Place a batch, deciding again while twins committed meanwhile keep surfacing.

        An IntegrityError means another transaction committed a row this batch also wrote (an
        order id, a key, a key's claim), so the next try reads it and replays instead. One
        request can meet two in a row: a sync request loses its key to an async intake's claim,
        then the claimed order to the consumer that stores it (CI saw that as a 500). Each
        conflict is a commit the next try sees, so a lone request settles within
        PLACE_ATTEMPTS; a larger batch that does not is halved by `_place_isolated`.
        """
        for _ in range(PLACE_ATTEMPTS - 1):
            with contextlib.suppress(IntegrityError):
                return await self._place(requests)
        return await self._place(requests)

    async def _place(self, requests: Sequence[OrderRequest]) -> list[Outcome]:
        """One try at a batch; after its commit, count the stored orders and wake the relay."""
        decision = await self._store.transact(partial(_decide, requests))
        if decision.orders:
            counts = collections.Counter((o.channel, o.status) for o in decision.orders)
            for (channel, status), n in counts.items():
                ORDERS_STORED.labels(channel, status).inc(n)
            self._on_event()
        return decision.outcomes

    async def accept_order(
        self,
        order: PlaceOrder,
        *,
        channel: AsyncChannel,
        caller: str,
        idempotency_key: str | None = None,
    ) -> Accepted:
        """Hand the order to a broker; it is stored when a consumer processes the command.
        `caller` (the token's subject) and the order's user scope the key."""
        self.check_order(order)
        price = await self._prices.get(order.product_id)
        if price is not None and domain.total_too_large(price, order.quantity):
            raise _too_large(order.quantity)
        order_id = uuid7()
        key = order_key(caller, order.user_id, idempotency_key)
        if key is not None:
            order_id = await self._claim(key, order_id, order)
        # Built without validating again: `order` was validated on the way in (2.2 us a request).
        command = OrderCommand.model_construct(
            id=order_id,
            user_id=order.user_id,
            product_id=order.product_id,
            quantity=order.quantity,
            channel=channel,
            accepted_at=dt.datetime.now(dt.UTC),
            idempotency_key=idempotency_key,
            caller=caller,
        )
        await self._publishers[channel].publish_command(command)
        ORDERS_ACCEPTED.labels(channel).inc()
        _note(order_id, f"accepted for {channel}")
        return Accepted(
            order_id, "pending", order.user_id, order.product_id, order.quantity, channel
        )

    async def _claim(self, key: bytes, order_id: uuid.UUID, order: PlaceOrder) -> uuid.UUID:
        """The id the key was first given (so every retry names one order), or `order_id` when
        the database cannot tell now (the consumer then joins the two, see domain)."""
        wanted = domain.KeyClaim(order_id, order.product_id, order.quantity)
        try:
            async with asyncio.timeout(self._lookup_seconds):
                claim = await self._store.claim_key(key, wanted)
        except Exception as exc:
            log.warning("could not claim an Idempotency-Key at intake: %r", exc)
            return order_id
        if not domain.same_order(claim, wanted):
            raise IdempotencyMismatch("This Idempotency-Key was first used with a different order.")
        return claim.order_id

    async def cancel_order(self, order_id: uuid.UUID, *, owner: int | None) -> Order:
        """Cancel a confirmed order and give its units back; anything else is a Conflict.

        With an `owner`, another user's order is NotFound, exactly like an unknown id.
        """
        decision = await self._store.transact(partial(_cancel, order_id, owner))
        self._on_event()
        return decision.changed[0]

    async def get_order(self, order_id: uuid.UUID, *, owner: int | None) -> Order:
        """One order (also under the id an asynchronous retry of it was given), or NotFound;
        with an `owner`, another user's order is NotFound too."""
        return domain.visible(order_id, await self._store.get(order_id), owner)

    async def list_orders(self, query: OrderQuery) -> tuple[list[Order], str | None]:
        """A page of orders and the cursor of the next page, if any."""
        try:
            after = None if query.cursor is None else uuid.UUID(query.cursor)
        except ValueError:
            raise InvalidInput("not a cursor this service issued", field="cursor") from None
        found = await self._store.page(
            limit=query.limit + 1, after=after, user_id=query.user_id, status=query.status
        )
        page = list(found[: query.limit])
        next_cursor = str(page[-1].id) if len(found) > query.limit else None
        return page, next_cursor
