"""The order consumer loop, with in-memory fakes of the inbound port and of the service."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shop import tracing
from shop.messaging.ports import PublishError
from shop.orders import consumer
from shop.orders.consumer import OrderBatchProcessor, run_order_consumer
from shop.orders.domain import Product
from shop.orders.models import OrderCommand
from shop.orders.service import OrderService
from shop.settings import Orders
from tests.unit.fakes import FakeOrderStore, FakePublisher, fake_prices

TEN = Orders(consumer_batch_size=10)


def _command(product_id: int = 1) -> OrderCommand:
    return OrderCommand(
        id=uuid.uuid4(),
        user_id=7,
        product_id=product_id,
        quantity=1,
        channel="kafka",
        accepted_at=dt.datetime.now(dt.UTC),
    )


@dataclass(frozen=True)
class FakeDelivery:
    body: bytes
    tag: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeInbound:
    """A queue in memory that records how each delivery was settled."""

    waiting: list[FakeDelivery] = field(default_factory=list)
    settled: dict[int, list[str]] = field(default_factory=dict)  # tag -> ["ack" | reason]
    dead_letter_failures: int = 0
    emptied: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, *bodies: bytes) -> list[FakeDelivery]:
        start = len(self.settled) + len(self.waiting)
        new = [FakeDelivery(body, start + i) for i, body in enumerate(bodies)]
        self.waiting.extend(new)
        return new

    async def take(self, max_messages: int, timeout: float) -> Sequence[FakeDelivery]:
        batch, self.waiting = self.waiting[:max_messages], self.waiting[max_messages:]
        if not batch and timeout > 0:  # the loop waits for more: all was taken
            self.emptied.set()
            await asyncio.sleep(0)
        return batch

    async def ack(self, deliveries: Sequence[FakeDelivery]) -> None:
        for d in deliveries:
            self.settled.setdefault(d.tag, []).append("ack")

    async def dead_letter(self, delivery: FakeDelivery, reason: str) -> None:
        if self.dead_letter_failures:
            self.dead_letter_failures -= 1
            raise PublishError("dlq down")
        self.settled.setdefault(delivery.tag, []).append(f"dlq: {reason}")

    async def depth(self) -> int:
        return len(self.waiting)

    def header(self, delivery: FakeDelivery, name: str) -> str | None:
        return delivery.headers.get(name)


@dataclass
class FakeService:
    """Stores commands; refuses the products in `refuse`; fails `failures` calls first."""

    refuse: set[int] = field(default_factory=set)
    failures: int = 0
    calls: int = 0
    stored: list[uuid.UUID] = field(default_factory=list)
    on_call: Callable[[], None] | None = None

    async def process_order_batch(self, commands: Sequence[OrderCommand]) -> Sequence[str | None]:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database down")
        verdicts: list[str | None] = []
        for c in commands:
            if c.product_id in self.refuse:
                verdicts.append("refused: cannot place")
            else:
                self.stored.append(c.id)
                verdicts.append(None)
        return verdicts


async def _run_until_drained(
    inbound: FakeInbound, service: OrderBatchProcessor, settings: Orders = TEN
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.create_task(
        run_order_consumer(
            stopping, channel="kafka", inbound=inbound, service=service, settings=settings
        )
    )
    await asyncio.wait_for(inbound.emptied.wait(), 5)
    stopping.set()
    await asyncio.wait_for(loop, 5)


async def test_a_batch_is_acked_only_after_the_service_stored_it() -> None:
    inbound, commands = FakeInbound(), [_command() for _ in range(3)]
    inbound.put(*(c.model_dump_json().encode() for c in commands))
    service = FakeService()
    service.on_call = lambda: assert_nothing_settled(inbound)
    await _run_until_drained(inbound, service)
    assert service.stored == [c.id for c in commands]
    assert inbound.settled == {0: ["ack"], 1: ["ack"], 2: ["ack"]}


def assert_nothing_settled(inbound: FakeInbound) -> None:
    assert inbound.settled == {}, "settled before the service returned"


async def test_poison_and_refused_commands_are_dead_lettered_and_the_rest_acked() -> None:
    inbound = FakeInbound()
    inbound.put(
        _command().model_dump_json().encode(),
        b"not json",
        _command(product_id=666).model_dump_json().encode(),
        b"",
        _command().model_dump_json().encode(),
    )
    await _run_until_drained(inbound, FakeService(refuse={666}))
    assert inbound.settled[0] == ["ack"]
    assert inbound.settled[1][0].startswith("dlq: invalid order command")
    assert inbound.settled[2] == ["dlq: refused: cannot place"]
    assert inbound.settled[3][0].startswith("dlq: invalid order command: empty")
    assert inbound.settled[4] == ["ack"]


async def test_every_delivery_is_settled_exactly_once() -> None:
    inbound = FakeInbound()
    bodies = [
        b"{}" if i % 7 == 0 else _command(product_id=666 if i % 5 == 0 else 1).model_dump_json()
        for i in range(95)
    ]
    inbound.put(*(b if isinstance(b, bytes) else b.encode() for b in bodies))
    inbound.dead_letter_failures = 2  # retried, not settled twice
    await _run_until_drained(inbound, FakeService(refuse={666}, failures=1))
    assert sorted(inbound.settled) == list(range(95))
    assert all(len(outcomes) == 1 for outcomes in inbound.settled.values()), inbound.settled


async def test_a_transient_failure_retries_the_same_batch_without_acking() -> None:
    inbound = FakeInbound()
    inbound.put(*(_command().model_dump_json().encode() for _ in range(4)))
    service = FakeService(failures=2)
    failures = consumer.CONSUMER_FAILURES.labels("kafka")
    before = failures._value.get()
    seen: list[dict[int, list[str]]] = []
    service.on_call = lambda: seen.append(dict(inbound.settled))
    await _run_until_drained(inbound, service)
    assert service.calls == 3
    assert seen == [{}, {}, {}], "acked while the batch was still failing"
    assert len(service.stored) == 4
    assert all(outcomes == ["ack"] for outcomes in inbound.settled.values())
    assert failures._value.get() - before == 2


async def test_stopping_mid_retry_returns_without_settling_anything() -> None:
    inbound = FakeInbound()
    inbound.put(*(_command().model_dump_json().encode() for _ in range(2)), b"poison")
    stopping = asyncio.Event()
    service = FakeService(failures=1000)
    service.on_call = lambda: stopping.set() if service.calls == 2 else None
    loop = asyncio.create_task(
        run_order_consumer(
            stopping,
            channel="kafka",
            inbound=inbound,
            service=service,
            settings=Orders(consumer_batch_size=10),
        )
    )
    # The second attempt comes after the first 0.1 s pause; stopping cuts the next pause short.
    await asyncio.wait_for(loop, 2)
    assert service.calls == 2
    assert inbound.settled == {}, "nothing may be settled when the batch was never stored"


async def test_under_load_a_batch_waits_briefly_for_more_and_stores_them_together() -> None:
    inbound = FakeInbound()
    inbound.put(*(_command().model_dump_json().encode() for _ in range(2)))
    service = FakeService()

    async def more_arrive() -> None:
        await asyncio.sleep(TEN.consumer_linger_seconds / 4)
        inbound.put(*(_command().model_dump_json().encode() for _ in range(3)))

    arrivals = asyncio.create_task(more_arrive())
    await _run_until_drained(inbound, service)
    await arrivals
    assert (service.calls, len(service.stored)) == (1, 5)


async def test_a_lone_order_is_stored_without_waiting() -> None:
    inbound = FakeInbound()
    inbound.put(_command().model_dump_json().encode())
    service = FakeService()
    # A linger would outlast the test.
    await _run_until_drained(
        inbound, service, TEN.model_copy(update={"consumer_linger_seconds": 60.0})
    )
    assert (service.calls, len(service.stored)) == (1, 1)


def _raw(**changes: Any) -> bytes:
    """A command as intake would publish it for user 7 (1 unit of product 1 through Kafka),
    with `changes` made to its JSON."""
    command = json.loads(_command().model_dump_json())
    command.update(changes)
    return json.dumps({k: v for k, v in command.items() if v is not ...}).encode()


# Commands put straight on the broker that intake would have refused, and the field refused.
REFUSED = [
    (
        _raw(quantity=TEN.max_quantity + 1),
        f"quantity: An order may be for at most {TEN.max_quantity}",
    ),
    (_raw(quantity=0), "quantity"),
    (_raw(quantity="5"), "quantity"),
    (_raw(quantity=2.5), "quantity"),  # 2.0 is the integer 2, as at intake
    (_raw(quantity=True), "quantity"),
    (_raw(quantity=...), "quantity"),
    (_raw(user_id=0), "user_id"),
    (_raw(user_id=2**63), "user_id"),
    (_raw(product_id=-1), "product_id"),
    (_raw(idempotency_key=""), "idempotency_key"),
    (_raw(idempotency_key="k" * 256), "idempotency_key"),
    (_raw(idempotency_key="line\nbreak"), "idempotency_key"),
    (_raw(idempotency_key="snow\u2603man"), "idempotency_key"),
    (_raw(idempotency_key=7), "idempotency_key"),
    (_raw(id="not-a-uuid"), "id"),
    (_raw(channel="sync"), "channel"),
    (_raw(channel="rabbitmq"), "channel: 'rabbitmq' read from kafka"),
]


@pytest.mark.parametrize(("body", "refused"), REFUSED, ids=[r[1][:40] for r in REFUSED])
async def test_a_command_intake_would_refuse_is_dead_lettered_with_why_and_not_stored(
    body: bytes, refused: str
) -> None:
    store = FakeOrderStore([Product(1, Decimal("2.50"), 10_000, 1)])
    service = OrderService(
        store,
        prices=fake_prices(store),
        publishers={"kafka": FakePublisher()},
        on_event=lambda: None,
        settings=TEN,
    )
    inbound = FakeInbound()
    valid = _raw(quantity=TEN.max_quantity, idempotency_key="a key\tof \u00e9 latin-1")
    inbound.put(body, valid)
    await _run_until_drained(inbound, service)  # the real service, over the in-memory store
    [reason] = inbound.settled[0]
    assert reason.startswith("dlq: invalid order command:"), reason
    assert refused in reason, reason
    assert inbound.settled[1] == ["ack"]
    [stored] = store.orders.values()
    assert (str(stored.id), stored.quantity) == (json.loads(valid)["id"], TEN.max_quantity)
    assert store.stock(1) == 10_000 - TEN.max_quantity


async def test_a_batch_is_traced_from_the_commands_publish_spans(
    spans: InMemorySpanExporter,
) -> None:
    publishes = []
    for _ in range(2):
        with tracing.server_span("POST", "/orders/async/kafka", []) as publish:
            assert publish is not None
            publishes.append(publish.get_span_context())
    inbound = FakeInbound()
    commands = [_command(), _command()]
    for command, context in zip(commands, publishes, strict=True):
        header = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
        delivery = FakeDelivery(command.model_dump_json().encode(), len(inbound.waiting))
        inbound.waiting.append(dataclasses.replace(delivery, headers={"traceparent": header}))
    inbound.put(b"not json")  # no traceparent: in the batch, not among its parents

    await _run_until_drained(inbound, FakeService())

    (batch,) = [s for s in spans.get_finished_spans() if s.name == "process kafka orders"]
    assert batch.kind is SpanKind.CONSUMER
    assert batch.parent is not None
    assert batch.parent.span_id == publishes[0].span_id
    assert [link.context.span_id for link in batch.links] == [p.span_id for p in publishes]
    assert batch.attributes is not None
    assert batch.attributes["shop.order_ids"] == tuple(str(c.id) for c in commands)


async def test_a_batch_span_names_only_the_commands_it_traces(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.server_span("POST", "/orders/async/kafka", []) as publish:
        assert publish is not None
        context = publish.get_span_context()
    inbound = FakeInbound()
    traced, untraced = _command(), _command()
    header = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
    delivery = FakeDelivery(traced.model_dump_json().encode(), 0)
    inbound.waiting.append(dataclasses.replace(delivery, headers={"traceparent": header}))
    inbound.put(untraced.model_dump_json().encode())

    await _run_until_drained(inbound, FakeService())

    (batch,) = [s for s in spans.get_finished_spans() if s.name == "process kafka orders"]
    assert batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 2
    assert batch.attributes["shop.order_ids"] == (str(traced.id),)
