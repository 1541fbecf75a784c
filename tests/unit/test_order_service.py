"""The order service's retries when twins commit meanwhile, with a fake of the database port."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import IntegrityError

from shop.orders import domain
from shop.orders.models import OrderCommand, PlaceOrder
from shop.orders.service import PLACE_ATTEMPTS, OrderService

NOW = dt.datetime(2026, 11, 27, 12, 0)


def _duplicate() -> IntegrityError:
    return IntegrityError("INSERT ...", {}, Exception(1062, "Duplicate entry for key 'PRIMARY'"))


def _order(order_id: uuid.UUID, channel: domain.Channel) -> domain.Order:
    return domain.Order(
        id=order_id,
        user_id=7,
        product_id=1,
        quantity=1,
        status="confirmed",
        reason=None,
        unit_price=Decimal("2.50"),
        total_price=Decimal("2.50"),
        channel=channel,
        created_at=NOW,
        updated_at=NOW,
        version=1,
    )


class ConflictingDb:
    """Fails the first `conflicts` units of work as a twin's commit would (a duplicate key),
    then stores `decision`."""

    timeout = 5.0

    def __init__(self, conflicts: int, decision: domain.Decision) -> None:
        self.conflicts = conflicts
        self.decision = decision
        self.units = 0

    async def transact_statements(self, work: Callable[[Any], Awaitable[Any]]) -> domain.Decision:
        self.units += 1
        if self.units <= self.conflicts:
            raise _duplicate()
        return self.decision


def _service(db: ConflictingDb) -> OrderService:
    return OrderService(db, publishers={}, on_event=lambda: None)  # type: ignore[arg-type]


def _command() -> OrderCommand:
    return OrderCommand(
        id=uuid.uuid4(),
        user_id=7,
        product_id=1,
        quantity=1,
        channel="kafka",
        accepted_at=dt.datetime.now(dt.UTC),
        idempotency_key="k",
    )


async def test_a_command_meeting_two_committed_twins_in_a_row_is_stored_not_dead_lettered() -> None:
    # Its key's claim, then the claimed order, each committed by another process meanwhile.
    command = _command()
    placed = _order(command.id, "kafka")
    db = ConflictingDb(2, domain.Decision(outcomes=[domain.Replayed(placed)]))
    assert await _service(db).process_order_batch([command]) == [None]
    assert db.units == 3


async def test_a_sync_order_meeting_two_committed_twins_in_a_row_gets_its_order() -> None:
    placed = _order(uuid.uuid4(), "sync")
    db = ConflictingDb(2, domain.Decision(outcomes=[domain.Replayed(placed)], orders=[]))
    service = _service(db)
    stopping = asyncio.Event()
    worker = asyncio.create_task(service.run_sync_orders(stopping))
    try:
        answer = await service.place_order(
            PlaceOrder(user_id=7, product_id=1, quantity=1), idempotency_key="k"
        )
    finally:
        stopping.set()
        await worker
    assert answer == domain.order_view(placed)
    assert db.units == 3


async def test_conflicts_that_never_settle_end_after_a_bounded_number_of_tries() -> None:
    db = ConflictingDb(10**6, domain.Decision())
    [reason] = await _service(db).process_order_batch([_command()])
    assert reason is not None
    assert reason.startswith("refused by the database")
    assert db.units == PLACE_ATTEMPTS
