"""The RabbitMQ publisher's answer to nacks, with fakes of aio-pika's connection and channel."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import pytest
from pamqp.commands import Basic

from shop.messaging import rabbitmq
from shop.messaging.rabbitmq import RabbitPublisher
from tests.support import confirmed


class FakeUnderlay:
    """The aiormq channel: confirms each publish, or nacks it while `nacking`."""

    def __init__(self, nacking: bool) -> None:
        self.nacking = nacking
        self.published = 0

    async def basic_publish(self, body: bytes, **_: Any) -> None:
        self.published += 1
        if self.nacking:
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=self.published))


class FakeDeclared:
    async def bind(self, *_: Any, **__: Any) -> None:
        return None


class FakeChannel:
    def __init__(self, nacking: bool) -> None:
        self.underlay = FakeUnderlay(nacking)
        self.is_closed = False

    async def get_underlay_channel(self) -> FakeUnderlay:
        return self.underlay

    async def declare_exchange(self, *_: Any, **__: Any) -> FakeDeclared:
        return FakeDeclared()

    async def declare_queue(self, *_: Any, **__: Any) -> FakeDeclared:
        return FakeDeclared()

    async def close(self) -> None:
        self.is_closed = True


class FakeConnection:
    """Every channel it opens nacks while `broken`, as a channel bound to a lost leader does."""

    def __init__(self) -> None:
        self.broken = True
        self.channels: list[FakeChannel] = []

    async def channel(self, **_: Any) -> FakeChannel:
        channel = FakeChannel(nacking=self.broken)
        self.channels.append(channel)
        return channel


@pytest.fixture(autouse=True)
def robust_channels_are_fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rabbitmq, "AbstractRobustChannel", FakeChannel)


async def _connected(connection: FakeConnection) -> RabbitPublisher:
    publisher = RabbitPublisher("amqp://unused", queue="orders", timeout=1.0)
    channel, _ = await publisher._open_channel(connection)  # type: ignore[arg-type]
    publisher._connection, publisher._channel = connection, channel  # type: ignore[assignment]
    return publisher


async def test_after_a_nack_the_next_publish_goes_out_on_a_new_channel() -> None:
    connection = FakeConnection()
    publisher = await _connected(connection)
    connection.broken = False  # the queue has a leader again: new channels reach it
    assert not await confirmed(publisher, timeout=1.0)  # nacked: this request's 503
    assert len(connection.channels) == 2
    assert connection.channels[0].is_closed
    assert await confirmed(publisher, timeout=1.0)
    assert connection.channels[1].underlay.published == 1


async def test_a_burst_of_nacks_opens_at_most_one_channel_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rabbitmq, "RENEW_SECONDS", 0.2)
    connection = FakeConnection()  # stays broken: every channel nacks
    publisher = await _connected(connection)
    results = await asyncio.gather(*(confirmed(publisher, timeout=1.0) for _ in range(50)))
    assert not any(results)
    assert len(connection.channels) == 2  # the first and one renewal
    await asyncio.sleep(0.25)
    assert not await confirmed(publisher, timeout=1.0)
    assert len(connection.channels) == 3
