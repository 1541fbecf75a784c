"""One order, one trace: from the HTTP request through the group commit or the broker, the
consumer's transaction and the outbox relay's publish of its event, and the log lines that
carry the trace's id (issue 23).

Both services run here with tracing on (every trace kept), exporting to an OTLP receiver in
this process (`tests.otlp_collector`), on a database, topics and a vhost of their own: the
suite's other services relay their outbox without tracing, and must not publish these rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack import rabbitmq
from devstack.settings import StackSettings
from tests.conftest import OPERATOR, RUN, _drop_database, migrate
from tests.e2e.orders_support import new_product, order_url, private_env, private_vhost
from tests.otlp_collector import Collector, ReceivedSpan, running_collector
from tests.support import ServiceProcess, eventually, free_port

pytestmark = pytest.mark.e2e

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP's span kinds


@dataclass
class Traced:
    collector: Collector
    products: httpx.AsyncClient
    orders: httpx.AsyncClient
    order_log: Path


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with running_collector() as running:
        yield running


@pytest.fixture(scope="module")
async def traced(
    settings: StackSettings, collector: Collector, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Traced]:
    env = {
        **private_env(settings, "traces"),
        "DB_NAME": f"shop_test_{RUN}_traces",
        "PRODUCT_SERVICE_PORT": str(free_port()),
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_TRACES_SAMPLER_ARG": "1",
        "OTEL_EXPORT_EVERY_SECONDS": "0.2",
        "LOG_LEVEL": "DEBUG",
    }
    private = await private_vhost(settings, env)
    await asyncio.to_thread(migrate, env)
    logs = Path(tmp_path_factory.mktemp("traced"))
    services = [
        ServiceProcess(
            "products",
            port=int(env["PRODUCT_SERVICE_PORT"]),
            env=env,
            log_path=logs / "products.log",
        ),
        ServiceProcess(
            "orders", port=int(env["ORDER_SERVICE_PORT"]), env=env, log_path=logs / "orders.log"
        ),
    ]
    try:
        for service in services:
            await service.start()
        async with (
            httpx.AsyncClient(base_url=services[0].url, timeout=15, headers=OPERATOR) as products,
            httpx.AsyncClient(base_url=services[1].url, timeout=15, headers=OPERATOR) as orders,
        ):
            yield Traced(collector, products, orders, services[1].log_path)
    finally:
        for service in services:
            assert service.stop(), f"{service.name} did not stop cleanly; see {service.log_path}"
        await asyncio.to_thread(rabbitmq.remove_vhost, private)
        await _drop_database(settings, env["DB_NAME"])


def _one(spans: list[ReceivedSpan], name: str, **where: object) -> ReceivedSpan:
    found = [
        s for s in spans if s.name == name and all(getattr(s, k) == v for k, v in where.items())
    ]
    assert len(found) == 1, (
        f"{len(found)} spans {name!r} {where} in {[(s.service, s.name) for s in spans]}"
    )
    return found[0]


def _child(
    spans: list[ReceivedSpan], parent: ReceivedSpan, name: str, **where: object
) -> ReceivedSpan:
    return _one(spans, name, parent_id=parent.span_id, trace_id=parent.trace_id, **where)


async def _whole_trace(collector: Collector, order_id: str) -> list[ReceivedSpan]:
    """The trace of the request that placed `order_id`, once the relays' publishes of both
    outbox rows (the order's event, and the stock it took) arrived: the last spans of the walk."""

    async def arrived() -> list[ReceivedSpan] | None:
        requests = [s for s in collector.find(**{"shop.order_id": order_id}) if s.kind == SERVER]
        if not requests:
            return None
        spans = collector.trace(requests[0].trace_id)
        relayed = {s.attributes.get("shop.outbox") for s in spans}
        return spans if {"order_outbox", "product_outbox"} <= relayed else None

    spans = await eventually(arrived, timeout=30, what=f"the trace of order {order_id}")
    assert spans is not None
    return spans


def _log_lines(path: Path, trace_id: str) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and trace_id in line:
            lines.append(json.loads(line))
    return lines


@pytest.mark.parametrize("path", ["sync", "kafka", "rabbitmq"])
async def test_one_order_is_one_trace_from_request_to_event(traced: Traced, path: str) -> None:
    product_id = await new_product(traced.products, stock=10)
    answer = await traced.orders.post(
        order_url(path), json={"user_id": 7, "product_id": product_id, "quantity": 1}
    )
    assert answer.status_code in (201, 202), answer.text
    order_id = answer.json()["id"]

    spans = await _whole_trace(traced.collector, order_id)
    request = _one(spans, f"POST {order_url(path)}", kind=SERVER, service="order-service")
    assert request.parent_id == ""  # the client sent no traceparent: the trace starts here
    if path == "sync":
        batch = _child(spans, request, "group commit", service="order-service")
        assert (request.trace_id, request.span_id) in batch.links
    else:
        publish = _child(spans, request, "publish order", kind=PRODUCER, service="order-service")
        assert publish.attributes["shop.order_id"] == order_id
        # The command carried the publish span's context through the broker's headers.
        batch = _child(
            spans, publish, f"process {path} orders", kind=CONSUMER, service="order-consumer"
        )
        assert (publish.trace_id, publish.span_id) in batch.links
    assert order_id in batch.attributes["shop.order_ids"]
    stored = _child(spans, batch, "transaction", kind=CLIENT)
    # The outbox row kept the transaction's context: the relay's publish joins this trace.
    relayed = _child(spans, stored, "publish events", kind=PRODUCER, service="order-consumer")
    assert relayed.attributes["shop.outbox"] == "order_outbox"
    # The stock it took went out as a product event, relayed by the product service.
    stock = _child(spans, stored, "publish events", service="product-service")
    assert stock.attributes["shop.outbox"] == "product_outbox"

    # The log lines written inside the trace carry its id, and the order's id.
    async def logged() -> list[dict[str, object]]:
        return _log_lines(traced.order_log, request.trace_id)

    lines = await eventually(logged, timeout=10, what="a log line with the trace id")
    assert any(line.get("order_id") == order_id for line in lines), lines
    assert all(len(str(line["span_id"])) == 16 for line in lines)


async def test_a_product_change_is_traced_to_its_event(traced: Traced) -> None:
    await new_product(traced.products, stock=None)

    async def relayed() -> list[ReceivedSpan]:
        spans = traced.collector.spans
        created = {
            s.span_id: s
            for s in spans
            if s.name == "POST /products" and s.kind == SERVER and s.service == "product-service"
        }
        return [s for s in spans if s.name == "publish events" and s.parent_id in created]

    published = await eventually(relayed, timeout=30, what="a product event's publish span")
    assert published[0].service == "product-service"
    assert published[0].attributes["shop.outbox"] == "product_outbox"
