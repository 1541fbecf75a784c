"""The RabbitMQ adapter without a broker: its answer to nacks (with fakes of aiormq's connection
and channel) and its reconnect loop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiormq
from pamqp.commands import Basic

from shop.messaging import rabbitmq
from shop.messaging.rabbitmq import RabbitBroker
from shop.settings import RabbitMQ
from tests.support import confirmed


class FakeChannel:
    """An aiormq channel: declares anything, confirms each publish, or nacks it while `nacking`."""

    def __init__(self, connection: FakeConnection, nacking: bool) -> None:
        self.connection = connection
        self.nacking = nacking
        self.published = 0
        self.is_closed = False

    async def basic_publish(self, body: bytes, **_: Any) -> None:
        self.published += 1
        if self.nacking:
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=self.published))

    async def exchange_declare(self, *_: Any, **__: Any) -> None:
        return None

    async def queue_bind(self, *_: Any, **__: Any) -> None:
        return None

    async def queue_declare(self, *_: Any, **__: Any) -> SimpleNamespace:
        return SimpleNamespace(message_count=0)

    async def close(self) -> None:
        self.is_closed = True


class FakeConnection:
    """Every channel it opens nacks while `broken`, as a channel bound to a lost leader does."""

    def __init__(self) -> None:
        self.broken = True
        self.is_closed = False
        self.channels: list[FakeChannel] = []

    async def channel(self, **_: Any) -> FakeChannel:
        channel = FakeChannel(self, nacking=self.broken)
        self.channels.append(channel)
        return channel


async def _connected(connection: FakeConnection, **settings: float) -> RabbitBroker:
    """A broker whose intake publishes on a channel of `connection`."""
    broker = RabbitBroker(RabbitMQ(host="unused", **settings), timeout=1.0)
    intake = broker._intake
    assert intake is not None
    check = broker.topology.check_exchange
    intake.channel = await broker._open_channel(connection, check)  # type: ignore[arg-type]
    return broker


async def test_after_a_nack_the_next_publish_goes_out_on_a_new_channel() -> None:
    connection = FakeConnection()
    broker = await _connected(connection)
    connection.broken = False  # the queue has a leader again: new channels reach it
    assert not await confirmed(broker, timeout=1.0)  # nacked: this request's 503
    assert len(connection.channels) == 2
    assert connection.channels[0].is_closed
    assert await confirmed(broker, timeout=1.0)
    assert connection.channels[1].published == 1


async def test_a_burst_of_nacks_opens_at_most_one_channel_per_interval() -> None:
    connection = FakeConnection()  # stays broken: every channel nacks
    broker = await _connected(connection, renew_channel_seconds=0.2)
    results = await asyncio.gather(*(confirmed(broker, timeout=1.0) for _ in range(50)))
    assert not any(results)
    assert len(connection.channels) == 2  # the first and one renewal
    await asyncio.sleep(0.25)
    assert not await confirmed(broker, timeout=1.0)
    assert len(connection.channels) == 3


async def test_a_lost_connection_is_made_again_until_stopping() -> None:
    fast = RabbitMQ(reconnect_first_seconds=0.001, reconnect_max_seconds=0.001)
    stopping, sessions = asyncio.Event(), list[int]()

    async def serve(stopping: asyncio.Event) -> None:
        sessions.append(len(sessions))
        if len(sessions) < 3:
            raise ConnectionError("lost")  # refused, or lost after a while
        await stopping.wait()

    keeping = asyncio.create_task(rabbitmq._reconnecting(stopping, serve, fast))
    while len(sessions) < 3:
        await asyncio.sleep(0.001)
    stopping.set()
    await asyncio.wait_for(keeping, 1)
    assert sessions == [0, 1, 2]


async def test_a_stop_during_an_outage_ends_the_loop_at_once() -> None:
    stopping = asyncio.Event()

    async def refused(_stopping: asyncio.Event) -> None:
        stopping.set()  # while the broker is down, the service stops
        raise ConnectionError("refused")

    await asyncio.wait_for(
        rabbitmq._reconnecting(stopping, refused, RabbitMQ()), 0.1
    )  # no 0.5 s pause


async def test_a_stop_during_the_pause_ends_the_loop_without_another_attempt() -> None:
    stopping, attempts = asyncio.Event(), list[int]()

    async def refused(_stopping: asyncio.Event) -> None:
        attempts.append(len(attempts))
        asyncio.get_running_loop().call_later(0.01, stopping.set)  # during the 0.5 s pause
        raise ConnectionError("refused")

    await asyncio.wait_for(rabbitmq._reconnecting(stopping, refused, RabbitMQ()), 0.3)
    assert attempts == [0]
