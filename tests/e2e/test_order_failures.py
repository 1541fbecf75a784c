"""Orders survive what goes wrong: a server down, a consumer killed, poison, a shutdown.

The invariants (ARCHITECTURE.md section 6) are checked after each failure: every order answered
201/202 is stored exactly once, nothing is stored that nobody sent, and for the product
`initial stock == current stock + units in confirmed orders` with stock never below zero.
Requests carry an Idempotency-Key, so the test knows the id of every order it *tried* (the id
is derived from caller, user and key), not only of those it was told were accepted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import devstack as stack
from devstack import rabbitmq
from devstack.settings import StackSettings
from shop.orders.service import order_key
from shop.orders.tables import order_keys
from tests.conftest import OPERATOR, OPERATOR_SUBJECT, STACK
from tests.e2e.orders_support import (
    dead_letters_in_queue,
    dead_letters_on_topic,
    new_product,
    place,
    private_env,
    private_vhost,
    publish_to_queue,
    publish_to_topic,
    stock_and_confirmed_units,
    stored_orders,
    wait_until_stored,
)
from tests.support import ServiceProcess, eventually, observer

pytestmark = pytest.mark.e2e

ASYNC_PATHS = ("kafka", "rabbitmq")
# The broker deadline is 2 s; a 503 must come well before a client would give up.
ANSWER_WITHIN = 3.0


def _user() -> int:
    return uuid.uuid4().int % 10**12 + 1


async def _ids_for(database: AsyncEngine, keys: set[tuple[int, str]]) -> set[str]:
    """The order ids that these (user, Idempotency-Key) pairs, sent by the operator, were given
    at intake."""
    if not keys:
        return set()
    hashes = [order_key(OPERATOR_SUBJECT, user_id, key) for user_id, key in keys]
    async with database.connect() as conn:
        rows = await conn.execute(
            select(order_keys.c.order_id).where(order_keys.c.key_hash.in_(hashes))
        )
        return {str(uuid.UUID(bytes=row.order_id)) for row in rows}


async def assert_orders_add_up(
    database: AsyncEngine,
    product_id: int,
    *,
    initial: int,
    accepted: set[str],
    attempted: set[str] | None = None,
    timeout: float = 60,
) -> list[dict[str, Any]]:
    """Nothing accepted is lost or doubled, nothing unsent is stored, nothing is oversold.

    Without `attempted`, exactly the accepted orders are stored. With it (requests whose answer
    never arrived may or may not have been published), the stored ones lie between the two.
    """
    stored = await wait_until_stored(database, product_id, accepted, timeout=timeout)
    ids = [o["id"] for o in stored]
    assert len(ids) == len(set(ids)), "an order stored twice"
    if attempted is None:
        assert set(ids) == accepted, f"stored {len(ids)} orders for {len(accepted)} accepted"
    else:
        assert set(ids) <= attempted, f"stored orders nobody sent: {set(ids) - attempted}"
    stock, confirmed_units = await stock_and_confirmed_units(database, product_id)
    assert stock >= 0
    assert initial == stock + confirmed_units, (initial, stock, confirmed_units)
    return stored


async def _all_stored_ids(database: AsyncEngine, product_id: int) -> set[str]:
    return {o["id"] for o in await stored_orders(database, product_id)}


async def _per_channel(orders: httpx.AsyncClient, counter: str) -> dict[str, float]:
    """A counter of the order service's /metrics, by channel."""
    text = (await orders.get("/metrics")).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == counter:
                counts[sample.labels["channel"]] = sample.value
    return counts


async def _queue_stats(settings: StackSettings) -> dict[str, Any]:
    """The RabbitMQ management API's view of the order queue (consumers, messages, ...)."""
    vhost, queue = (
        urllib.parse.quote(n, safe="") for n in (settings.rabbitmq.vhost, settings.rabbitmq.queue)
    )
    url = f"http://{settings.rabbitmq.host}:{settings.stack.management_port}/api/queues/{vhost}/{queue}"
    auth = (settings.stack.admin_user, settings.stack.admin_password)
    async with httpx.AsyncClient(auth=auth, timeout=5) as management:
        response = await management.get(url)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


# --- 1. MariaDB down: async intake does no database work --------------------------------------


@pytest.mark.disruptive
async def test_async_intake_keeps_accepting_while_mariadb_is_down(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: AsyncEngine,
    settings: StackSettings,
) -> None:
    pid = await new_product(products, stock=20)
    user = _user()
    failures_before = await _per_channel(orders, "order_consumer_failures_total")
    await asyncio.to_thread(stack.stop, "mariadb", STACK)
    try:
        answers = await asyncio.gather(
            *(
                place(orders, ASYNC_PATHS[i % 2], product_id=pid, user_id=user, key=f"db-{i}")
                for i in range(30)
            )
        )
        assert [a.status_code for a in answers] == [202] * 30, [a.text for a in answers]
        # The synchronous path needs the database: it fails fast and says when to retry.
        began = time.monotonic()
        sync = await place(orders, "sync", product_id=pid, user_id=user)
        assert sync.status_code == 503, sync.text
        assert sync.headers["retry-after"]
        assert time.monotonic() - began < 10

        async def both_consumers_hit_the_outage() -> bool:
            failures = await _per_channel(orders, "order_consumer_failures_total")
            return all(failures.get(c, 0) > failures_before.get(c, 0) for c in ASYNC_PATHS)

        # Restarting at once would hide a consumer that drops a batch it could not store.
        await eventually(
            both_consumers_hit_the_outage, timeout=20, what="consumers retrying the outage"
        )
    finally:
        await asyncio.to_thread(stack.start, "mariadb", STACK)
    accepted = {a.json()["id"] for a in answers}
    assert len(accepted) == 30
    stored = await assert_orders_add_up(database, pid, initial=20, accepted=accepted, timeout=60)
    assert sum(o["status"] == "confirmed" for o in stored) == 20
    assert {o["reason"] for o in stored if o["status"] == "rejected"} == {"out_of_stock"}


# --- 2./3. A broker down: 503 on its path, the others work, intake resumes by itself ----------


async def _refused_within_deadline(
    orders: httpx.AsyncClient, path: str, *, product_id: int, user_id: int, key: str
) -> None:
    began = time.monotonic()
    answer = await place(orders, path, product_id=product_id, user_id=user_id, key=key)
    took = time.monotonic() - began
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.json()["status"] == 503
    assert took < ANSWER_WITHIN, f"{path} took {took:.2f}s to refuse"


async def _check_outage(
    down: str,
    *,
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: AsyncEngine,
    settings: StackSettings,
    after_restart: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Stop `down`; its path refuses fast, the other two accept; after the restart it accepts
    again without a service restart, and what was refused during the outage is never stored."""
    pid = await new_product(products, stock=100)
    user = _user()
    others = [("sync", 201), *((p, 202) for p in ASYNC_PATHS if p != down)]
    accepted: set[str] = set()
    refused: set[tuple[int, str]] = set()  # answered 503 while the broker was certainly down
    unsure: set[tuple[int, str]] = (
        set()
    )  # answered 503 while it was coming back: may have got through
    await asyncio.to_thread(stack.stop, down, STACK)
    try:
        for i in range(3):
            key = f"{down}-down-{i}"
            await _refused_within_deadline(orders, down, product_id=pid, user_id=user, key=key)
            refused.add((user, key))
            for path, status in others:
                answer = await place(orders, path, product_id=pid, user_id=user)
                assert answer.status_code == status, (path, answer.text)
                accepted.add(answer.json()["id"])
    finally:
        await asyncio.to_thread(stack.start, down, STACK)

    attempts = iter(range(10_000))

    async def accepting_again() -> bool:
        key = f"{down}-back-{next(attempts)}"
        answer = await place(orders, down, product_id=pid, user_id=user, key=key)
        if answer.status_code == 202:
            accepted.add(answer.json()["id"])
            return True
        assert answer.status_code == 503, answer.text
        unsure.add((user, key))
        return False

    await eventually(accepting_again, timeout=90, interval=1.0, what=f"{down} intake back")
    if after_restart is not None:
        await after_restart()
    # Every worker process reconnects on its own: the next orders may meet one that has not
    # yet (a 503 then is as before), but each is accepted within a short while.
    for _ in range(3):
        await eventually(accepting_again, timeout=30, interval=0.5, what=f"{down} intake back")
    await assert_orders_add_up(
        database,
        pid,
        initial=100,
        accepted=accepted,
        attempted=accepted | await _ids_for(database, unsure),
        timeout=90,
    )
    refused_ids = await _ids_for(database, refused)
    assert len(refused_ids) == len(refused), "a refused request's key was not claimed"
    assert not refused_ids & await _all_stored_ids(database, pid), (
        "an order refused with 503 stored"
    )


@pytest.mark.disruptive
async def test_rabbitmq_outage_gives_503_and_intake_resumes(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: AsyncEngine,
    settings: StackSettings,
) -> None:

    async def consumed_again() -> None:
        async def has_consumer() -> bool:
            return int((await _queue_stats(settings))["consumers"]) >= 1

        await eventually(has_consumer, timeout=60, interval=0.5, what="queue consumer back")

    await _check_outage(
        "rabbitmq",
        products=products,
        orders=orders,
        database=database,
        settings=settings,
        after_restart=consumed_again,
    )


@pytest.mark.disruptive
async def test_kafka_outage_gives_503_and_intake_resumes(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: AsyncEngine,
    settings: StackSettings,
) -> None:
    await _check_outage(
        "kafka", products=products, orders=orders, database=database, settings=settings
    )


# --- 4./6. The service's own process dies or is stopped in the middle of a stream -------------


@dataclass
class Stream:
    """What happened to a stream of keyed async orders."""

    attempted: set[tuple[int, str]] = field(default_factory=set)  # (user, key)
    accepted: set[str] = field(default_factory=set)
    cut_off: int = 0  # no answer: connection refused or dropped
    other: list[str] = field(default_factory=list)


async def _stream(
    client: httpx.AsyncClient,
    *,
    product_id: int,
    user_id: int,
    count: int,
    concurrency: int,
    interrupt_after: int,
    interrupt: Callable[[], None],
) -> Stream:
    """Send `count` async orders over both brokers, at most `concurrency` at a time, and call
    `interrupt` once, as soon as `interrupt_after` of them have been accepted."""
    stream = Stream()
    gate = asyncio.Semaphore(concurrency)
    fired = False

    async def one(i: int) -> None:
        nonlocal fired
        key = f"stream-{i}"
        stream.attempted.add((user_id, key))
        async with gate:
            try:
                answer = await place(
                    client,
                    ASYNC_PATHS[i % 2],
                    product_id=product_id,
                    user_id=user_id,
                    key=key,
                )
            except httpx.TransportError:
                stream.cut_off += 1
                return
        if answer.status_code == 202:
            stream.accepted.add(answer.json()["id"])
        else:
            stream.other.append(f"{answer.status_code} {answer.text[:200]}")
        if not fired and len(stream.accepted) >= interrupt_after:
            fired = True
            interrupt()

    await asyncio.gather(*(one(i) for i in range(count)))
    assert fired, f"the stream ended before {interrupt_after} orders were accepted: {stream}"
    return stream


async def _send_more(
    client: httpx.AsyncClient, *, product_id: int, user_id: int, count: int
) -> set[str]:
    accepted = set()
    for i in range(count):
        answer = await place(
            client,
            ASYNC_PATHS[i % 2],
            product_id=product_id,
            user_id=user_id,
            key=f"after-{i}",
        )
        assert answer.status_code == 202, answer.text
        accepted.add(answer.json()["id"])
    return accepted


async def _warm_up(
    client: httpx.AsyncClient, database: AsyncEngine, *, product_id: int, user_id: int
) -> set[str]:
    """One order through each broker, stored: both consumers of a fresh process are running
    (a new Kafka group member gets its partitions only after the group's first rebalance)."""
    accepted = set()
    for path in ASYNC_PATHS:
        answer = await place(client, path, product_id=product_id, user_id=user_id, key=path)
        assert answer.status_code == 202, answer.text
        accepted.add(answer.json()["id"])
    await wait_until_stored(database, product_id, accepted, timeout=30)
    return accepted


def _incarnations(env: dict[str, str], logs: Path) -> Iterator[ServiceProcess]:
    """Successive processes of one private order service, each with its own log."""
    port = int(env["ORDER_SERVICE_PORT"])
    for n in range(1, 10):
        yield ServiceProcess("orders", port=port, env=env, log_path=logs / f"orders-{n}.log")


async def test_consumer_killed_mid_stream_loses_and_doubles_nothing(
    products: httpx.AsyncClient, database: AsyncEngine, settings: StackSettings, tmp_path: Path
) -> None:
    env = private_env(settings, "kill")
    private = await private_vhost(settings, env)
    pid = await new_product(products, stock=150)
    user = _user()
    processes = _incarnations(env, tmp_path)
    service = next(processes)
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=15, headers=OPERATOR) as client:
            warm = await _warm_up(client, database, product_id=pid, user_id=user)
            stream = await _stream(
                client,
                product_id=pid,
                user_id=user,
                count=400,
                concurrency=20,
                interrupt_after=200,
                interrupt=service.kill,
            )
        assert stream.other == []
        assert stream.cut_off > 0, "the kill came after the stream: nothing was cut off"
        service = next(processes)
        await service.start()
        async with httpx.AsyncClient(base_url=service.url, timeout=15, headers=OPERATOR) as client:
            after = await _send_more(client, product_id=pid, user_id=user, count=20)
        await assert_orders_add_up(
            database,
            pid,
            initial=150,
            accepted=warm | stream.accepted | after,
            attempted=warm | await _ids_for(database, stream.attempted) | after,
            timeout=90,
        )
    finally:
        clean = service.stop()
        await asyncio.to_thread(rabbitmq.remove_vhost, private)
    assert clean, f"order service did not stop cleanly; see {service.log_path}"


async def test_sigterm_stops_the_order_service_within_10_seconds_without_losing_accepted_orders(
    products: httpx.AsyncClient, database: AsyncEngine, settings: StackSettings, tmp_path: Path
) -> None:
    env = private_env(settings, "term")
    private = await private_vhost(settings, env)
    pid = await new_product(products, stock=200)
    user = _user()
    processes = _incarnations(env, tmp_path)
    service = next(processes)
    await service.start()
    stopped: list[asyncio.Task[tuple[bool, float]]] = []

    def timed_stop(process: ServiceProcess) -> tuple[bool, float]:
        began = time.monotonic()
        clean = process.stop(timeout=10)
        return clean, time.monotonic() - began

    def sigterm() -> None:
        stopped.append(asyncio.create_task(asyncio.to_thread(timed_stop, service)))

    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=15, headers=OPERATOR) as client:
            warm = await _warm_up(client, database, product_id=pid, user_id=user)
            stream = await _stream(
                client,
                product_id=pid,
                user_id=user,
                count=300,
                concurrency=20,
                interrupt_after=100,
                interrupt=sigterm,
            )
        clean, took = await stopped[0]
        assert clean, f"not a clean shutdown; see {service.log_path}"
        assert took < 10
        assert all(o.startswith("503 ") for o in stream.other), stream.other
        service = next(processes)
        await service.start()
        async with httpx.AsyncClient(base_url=service.url, timeout=15, headers=OPERATOR) as client:
            after = await _send_more(client, product_id=pid, user_id=user, count=10)
        await assert_orders_add_up(
            database,
            pid,
            initial=200,
            accepted=warm | stream.accepted | after,
            attempted=warm | await _ids_for(database, stream.attempted) | after,
            timeout=90,
        )
    finally:
        for task in stopped:
            await asyncio.gather(task, return_exceptions=True)
        clean = service.stop()
        await asyncio.to_thread(rabbitmq.remove_vhost, private)
    assert clean, f"order service did not stop cleanly; see {service.log_path}"


# --- 5. Poison: dead-lettered with the reason, never stored, never blocking -------------------


async def test_poison_messages_go_to_dead_letters_and_consumption_goes_on(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: AsyncEngine,
    settings: StackSettings,
) -> None:
    pid = await new_product(products, stock=10)
    user = _user()
    dead_before = await _per_channel(orders, "order_dead_letters_total")
    poison_ids: dict[str, str] = {}
    poison: dict[str, list[bytes]] = {}
    for channel in ASYNC_PATHS:
        poison_ids[channel] = str(uuid.uuid4())
        invalid = {
            "id": poison_ids[channel],
            "user_id": user,
            "product_id": pid,
            "quantity": 0,
            "channel": channel,
            "accepted_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        poison[channel] = [
            b"\x00not json " + uuid.uuid4().hex.encode(),
            json.dumps(invalid).encode(),
        ]
    # Keyed like real commands (by product), so they sit in the same partition, before the
    # valid order sent next: that order being stored proves the consumer got past them.
    await asyncio.to_thread(
        publish_to_topic, settings.kafka, settings.kafka.topic, str(pid), poison["kafka"]
    )
    await publish_to_queue(settings, poison["rabbitmq"])
    valid = {}
    for channel in ASYNC_PATHS:
        answer = await place(orders, channel, product_id=pid, user_id=user)
        assert answer.status_code == 202, answer.text
        valid[answer.json()["id"]] = channel
    await assert_orders_add_up(database, pid, initial=10, accepted=set(valid), timeout=30)

    on_topic = await asyncio.to_thread(
        dead_letters_on_topic,
        observer(settings),
        settings.kafka.dlq_topic,
        set(poison["kafka"]),
        timeout=30,
    )
    assert on_topic.keys() == set(poison["kafka"]), "Kafka poison missing from the dead letters"
    assert all(headers.get("reason") for headers in on_topic.values()), on_topic
    in_queue = await dead_letters_in_queue(settings, set(poison["rabbitmq"]), timeout=30)
    assert all(headers.get("x-reason") for headers in in_queue.values()), in_queue

    dead = await _per_channel(orders, "order_dead_letters_total")
    for channel in ASYNC_PATHS:
        assert dead.get(channel, 0) - dead_before.get(channel, 0) >= 2, (dead_before, dead)
    for poison_id in poison_ids.values():
        assert (await orders.get(f"/orders/{poison_id}")).status_code == 404
    assert await _all_stored_ids(database, pid) == set(valid)


@pytest.mark.disruptive
async def test_poison_held_across_a_rabbitmq_restart_does_not_wedge_the_consumer(
    products: httpx.AsyncClient,
    orders: httpx.AsyncClient,
    database: AsyncEngine,
    settings: StackSettings,
) -> None:
    """A poison message delivered before a RabbitMQ restart and dead-lettered after it: its
    delivery tag belongs to the dead connection, so acking it fails. That must not keep the
    consumer retrying that one message forever."""
    pid = await new_product(products, stock=10)
    user = _user()
    failures_before = await _per_channel(orders, "order_consumer_failures_total")
    poison = b"\x00held poison " + uuid.uuid4().hex.encode()
    await asyncio.to_thread(stack.stop, "mariadb", STACK)
    try:
        first = await place(orders, "rabbitmq", product_id=pid, user_id=user)
        assert first.status_code == 202, first.text

        async def stuck_on_the_database() -> bool:
            failures = await _per_channel(orders, "order_consumer_failures_total")
            return failures.get("rabbitmq", 0) > failures_before.get("rabbitmq", 0)

        await eventually(stuck_on_the_database, timeout=20, what="rabbitmq consumer retrying")
        await publish_to_queue(settings, [poison])

        async def both_delivered() -> bool:
            return int((await _queue_stats(settings))["messages_unacknowledged"]) >= 2

        await eventually(both_delivered, timeout=20, what="poison delivered, unacked")
        await asyncio.to_thread(stack.stop, "rabbitmq", STACK)
    finally:
        await asyncio.to_thread(stack.start, "mariadb", STACK)
        await asyncio.to_thread(stack.start, "rabbitmq", STACK)
    await wait_until_stored(database, pid, {first.json()["id"]}, timeout=60)

    async def rabbit_intake_back() -> str | None:
        answer = await place(orders, "rabbitmq", product_id=pid, user_id=user)
        return str(answer.json()["id"]) if answer.status_code == 202 else None

    later = await eventually(rabbit_intake_back, timeout=60, interval=1.0, what="intake back")
    await assert_orders_add_up(
        database, pid, initial=10, accepted={first.json()["id"], later}, timeout=60
    )
    in_queue = await dead_letters_in_queue(settings, {poison}, timeout=30)
    assert in_queue[poison].get("x-reason")
