"""What happens to an order, decided without I/O: placing a batch, and cancelling one.

The service loads what a decision needs (the orders already stored under the requests' ids and
keys, and the products under lock), calls a function here, and stores what it returns. Sync and
async requests go through the same rules; they differ only in what a refusal becomes: a sync
request is refused and nothing is stored, an async command (its client already holds a 202) is
stored as a `rejected` order whose `reason` the client can read.

Requests are decided one after another, each seeing what the earlier ones did (stock taken,
orders and keys recorded), so the outcome does not depend on how requests are cut into batches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from shop.access.verifier import Forbidden
from shop.errors import Conflict, InvalidInput, NotFound
from shop.events import Event

AsyncChannel = Literal["kafka", "rabbitmq"]
Channel = Literal["sync", AsyncChannel]
Status = Literal["confirmed", "rejected", "cancelled"]  # of a stored order
OrderStatus = Literal["pending", Status]  # as the API shows it (pending: not stored yet)

# The largest total an order may have: what orders.total_price (NUMERIC(14, 2)) holds.
MAX_TOTAL = Decimal("999999999999.99")

OUT_OF_STOCK = "out_of_stock"
UNKNOWN_PRODUCT = "unknown_product"
TOTAL_TOO_LARGE = "total_too_large"
KEY_REUSED = "idempotency_key_reused"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order to place: its id (given at intake), what it asks for, and its scoped key."""

    order_id: uuid.UUID
    user_id: int
    product_id: int
    quantity: int
    channel: Channel
    key: bytes | None = None  # the hash of (caller, user, Idempotency-Key), when one was sent


@dataclass(frozen=True, slots=True)
class Order:
    """An order as stored: one field per column of the `orders` table."""

    id: uuid.UUID
    user_id: int
    product_id: int
    quantity: int
    status: Status
    reason: str | None
    unit_price: Decimal | None
    total_price: Decimal | None
    channel: Channel
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


@dataclass(frozen=True, slots=True)
class Product:
    """What an order needs of a product: its price, its stock (None: not tracked), its version."""

    id: int
    price: Decimal
    stock: int | None
    version: int


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """A key that asynchronous intake claimed for an order id before the order was stored, so
    every request under the key is given that one id."""

    order_id: uuid.UUID
    product_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class Known:
    """What is stored already: orders by id (aliases included), the products, and the keys'
    claims (a claim whose order is stored names that order; the others wait for theirs)."""

    orders: Mapping[uuid.UUID, Order] = field(default_factory=dict)
    products: Mapping[int, Product] = field(default_factory=dict)
    claims: Mapping[bytes, KeyClaim] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placed:
    """Stored now: confirmed, or (async) rejected with a reason."""

    order: Order


@dataclass(frozen=True, slots=True)
class Replayed:
    """Stored before, under this id or under this key with the same request."""

    order: Order


@dataclass(frozen=True, slots=True)
class Refused:
    """(Sync) not placed and nothing stored: `reason` says why."""

    reason: str
    product_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class KeyMismatch:
    """(Sync) the key was first used for a different order (None: not stored yet); nothing
    stored."""

    order: Order | None


Outcome = Placed | Replayed | Refused | KeyMismatch


@dataclass(slots=True)
class Decision:
    """Per request an outcome, and what to store for all of them."""

    outcomes: list[Outcome] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)  # new: to insert
    changed: list[Order] = field(default_factory=list)  # stored: their new state
    keys: dict[bytes, uuid.UUID] = field(default_factory=dict)  # new: to record
    aliases: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    products: dict[int, Product] = field(default_factory=dict)  # changed: their new state
    events: list[Event] = field(default_factory=list)


def same_order(first: Order | KeyClaim, then: OrderRequest | KeyClaim) -> bool:
    """Whether two requests under one Idempotency-Key ask for the same order (so the second
    replays the first); the rest of the body is the key's user's, or the intake's."""
    return (first.product_id, first.quantity) == (then.product_id, then.quantity)


def check_quantity(quantity: int, *, most: int) -> None:
    """Refuse an order of more than `most` units (MAX_ORDER_QUANTITY)."""
    if quantity > most:
        raise InvalidInput(f"An order may be for at most {most} unit(s).", field="quantity")


def visible(order_id: uuid.UUID, order: Order | None, owner: int | None) -> Order:
    """The order with this id, if the caller may see (and cancel) it: its owner, or anyone when
    `owner` is None (admin). To anyone else, as when there is none, it does not exist."""
    if order is None or (owner is not None and order.user_id != owner):
        raise NotFound(f"No order with id {order_id}.")
    return order


def listed_user(owner: int | None, user_id: int | None) -> int | None:
    """Whose orders a caller lists when it asks for `user_id`'s (None: anyone's): a customer
    (`owner`) only their own, refused for another's; an admin (`owner` None) whoever it asks."""
    if owner is None:
        return user_id
    if user_id not in (None, owner):
        raise Forbidden("You may list only your own orders.")
    return owner


def total_too_large(price: Decimal, quantity: int) -> bool:
    """Whether `quantity` units at `price` exceed what an order may total."""
    return price * quantity > MAX_TOTAL


def order_view(order: Order) -> dict[str, Any]:
    """The order as the API and its events show it."""
    return {
        "id": str(order.id),
        "user_id": order.user_id,
        "product_id": order.product_id,
        "quantity": order.quantity,
        "status": order.status,
        "reason": order.reason,
        "unit_price": order.unit_price,
        "total_price": order.total_price,
        "channel": order.channel,
        "created_at": order.created_at,
    }


def place_orders(requests: Sequence[OrderRequest], known: Known, *, now: dt.datetime) -> Decision:
    """Decide each request in turn against what is stored and what earlier requests did."""
    orders, claims = dict(known.orders), known.claims
    keys = {k: orders[c.order_id] for k, c in claims.items() if c.order_id in orders}
    waiting = {k: c for k, c in claims.items() if c.order_id not in orders}
    decision = Decision()
    state = _State(orders, keys, dict(known.products), waiting, decision, now)
    decision.outcomes = [state.decide(request) for request in requests]
    decision.events = [_order_event(o) for o in decision.orders] + [
        _stock_event(p) for p in decision.products.values()
    ]
    return decision


def cancel_order(
    order_id: uuid.UUID,
    order: Order | None,
    product: Product | None,
    *,
    owner: int | None,
    now: dt.datetime,
) -> Decision:
    """Cancel a confirmed order and give its units back to tracked stock; to anyone but its
    owner (or an admin: `owner` None) the order does not exist."""
    order = visible(order_id, order, owner)
    if order.status != "confirmed":
        raise Conflict(f"Order {order.id} is {order.status}; only confirmed orders cancel.")
    cancelled = dataclasses.replace(
        order, status="cancelled", updated_at=now, version=order.version + 1
    )
    decision = Decision(outcomes=[Placed(cancelled)], changed=[cancelled])
    decision.events.append(_order_event(cancelled))
    if product is not None and product.stock is not None:
        released = dataclasses.replace(
            product, stock=product.stock + order.quantity, version=product.version + 1
        )
        decision.products[product.id] = released
        decision.events.append(_stock_event(released))
    return decision


@dataclass(slots=True)
class _State:
    """What the requests decided so far see: stored and new orders, keys, claims, stock."""

    orders: dict[uuid.UUID, Order]
    keys: dict[bytes, Order]
    products: dict[int, Product]
    claims: dict[bytes, KeyClaim]
    decision: Decision
    now: dt.datetime

    def decide(self, request: OrderRequest) -> Outcome:
        stored = self.orders.get(request.order_id)
        if stored is not None:  # redelivered, or a retry named by an alias
            return Replayed(stored)
        if request.key is None:
            return self._place(request)
        first = self.keys.get(request.key)
        if first is not None:
            if same_order(first, request):
                self._alias(request, first.id)
                return Replayed(first)
            return self._key_reused(request, first)
        claim = self.claims.get(request.key)
        if claim is None:
            return self._place(request, record_key=True)
        if not same_order(claim, request):
            return self._key_reused(request, None)
        # The key was given an id at intake and its order is not stored yet: this is it.
        self._alias(request, claim.order_id)
        outcome = self._place(dataclasses.replace(request, order_id=claim.order_id))
        if isinstance(outcome, Placed):
            del self.claims[request.key]
            self.keys[request.key] = outcome.order
            if request.order_id in self.decision.aliases:
                self.orders[request.order_id] = outcome.order
        return outcome

    def _place(self, request: OrderRequest, *, record_key: bool = False) -> Outcome:
        reason = self._take_stock(request)
        if reason is None:
            order = _order(request, self.now, price=self.products[request.product_id].price)
        elif request.channel == "sync":
            return Refused(reason, request.product_id, request.quantity)
        else:
            order = _order(request, self.now, reason)
        if record_key and request.key is not None:
            self.decision.keys[request.key] = order.id
            self.keys[request.key] = order
        return self._add(order)

    def _alias(self, request: OrderRequest, order_id: uuid.UUID) -> None:
        """An async request's own id (its 202 named it) must find the order it is one with."""
        if request.channel != "sync" and request.order_id != order_id:
            self.decision.aliases[request.order_id] = order_id
            if order_id in self.orders:
                self.orders[request.order_id] = self.orders[order_id]

    def _key_reused(self, request: OrderRequest, first: Order | None) -> Outcome:
        if request.channel == "sync":
            return KeyMismatch(first)
        # Its client holds a 202 for this id: store the refusal under it, for them to read.
        return self._add(_order(request, self.now, KEY_REUSED))

    def _add(self, order: Order) -> Placed:
        """A new order: to insert, and seen by the requests after it."""
        self.decision.orders.append(order)
        self.orders[order.id] = order
        return Placed(order)

    def _take_stock(self, request: OrderRequest) -> str | None:
        """Take the request's units from its product; the reason when it cannot."""
        product = self.products.get(request.product_id)
        if product is None:
            return UNKNOWN_PRODUCT
        if total_too_large(product.price, request.quantity):
            return TOTAL_TOO_LARGE
        if product.stock is None:
            return None
        if product.stock < request.quantity:
            return OUT_OF_STOCK
        # A batch's units taken are one change of the product, as its one stock event says:
        # one version more, however many orders took units (so the versions on product-events
        # are consecutive, and a consumer that sees a gap knows it missed an event).
        version = product.version if product.id in self.decision.products else product.version + 1
        # (the constructor, not dataclasses.replace: this runs once per order)
        taken = Product(product.id, product.price, product.stock - request.quantity, version)
        self.products[product.id] = self.decision.products[product.id] = taken
        return None


def _order(
    request: OrderRequest, now: dt.datetime, reason: str | None = None, price: Decimal | None = None
) -> Order:
    """Confirmed at `price`; or rejected for `reason`, without a price: it took nothing."""
    return Order(
        id=request.order_id,
        user_id=request.user_id,
        product_id=request.product_id,
        quantity=request.quantity,
        status="confirmed" if reason is None else "rejected",
        reason=reason,
        unit_price=price,
        total_price=None if price is None else price * request.quantity,
        channel=request.channel,
        created_at=now,
        updated_at=now,
        version=1,
    )


def _order_event(order: Order) -> Event:
    return Event("order", f"order.{order.status}", str(order.id), order.version, order_view(order))


def _stock_event(product: Product) -> Event:
    data = {"id": product.id, "stock": product.stock}
    return Event("product", "product.stock_changed", str(product.id), product.version, data)
