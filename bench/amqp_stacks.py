"""aio-pika against raw aiormq on the RabbitMQ adapter's two hot paths, on the real broker.

- publish: persistent, mandatory messages on a confirming channel, `--inflight` at a time (as
  concurrent intake requests publish), each awaited until the broker confirmed it;
- consume: a queue filled beforehand is drained with prefetch `--prefetch`; deliveries go into
  an inbox and each batch taken from it is acked with one `multiple` frame (as the adapter does).

Each stack runs `--rounds` times on uvloop (as the services do), alternating, on a queue of its
own that is deleted after.

    python -m bench.amqp_stacks                    # the stack's RabbitMQ, as its administrator
    python -m bench.amqp_stacks --messages 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import aiormq
import uvloop
from aio_pika.abc import AbstractIncomingMessage
from pamqp.commands import Basic

from devstack import rabbitmq
from devstack.settings import load_stack_settings

BODY = b'{"id": "0190f3c1-7c1e-7a8e-9d3e-000000000000", "user_id": 1, "product_id": 1}'


async def _drive(count: int, inflight: int, publish_one: Callable[[], Awaitable[object]]) -> float:
    """Messages per second confirmed, `inflight` publishers at a time."""
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await publish_one()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return count / (time.perf_counter() - started)


async def publish_aiopika(url: str, queue: str, count: int, inflight: int) -> float:
    async with await aio_pika.connect_robust(url) as connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(queue, durable=True)
        exchange = channel.default_exchange

        def one() -> Awaitable[object]:
            message = aio_pika.Message(
                BODY,
                message_id="k",
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            return exchange.publish(message, routing_key=queue, mandatory=True)

        return await _drive(count, inflight, one)


async def publish_aiormq(url: str, queue: str, count: int, inflight: int) -> float:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.queue_declare(queue, durable=True)
        properties = Basic.Properties(
            message_id="k", content_type="application/json", delivery_mode=2
        )

        def one() -> Awaitable[object]:
            return channel.basic_publish(
                BODY, routing_key=queue, properties=properties, mandatory=True
            )

        return await _drive(count, inflight, one)
    finally:
        await connection.close()


async def _drain(
    inbox: asyncio.Queue[object], count: int, ack: Callable[[object], Awaitable[None]]
) -> float:
    taken = 0
    started = time.perf_counter()
    while taken < count:
        batch = [await inbox.get()]
        while not inbox.empty():
            batch.append(inbox.get_nowait())
        taken += len(batch)
        await ack(batch[-1])
    return count / (time.perf_counter() - started)


async def consume_aiopika(url: str, queue: str, count: int, prefetch: int) -> float:
    async with await aio_pika.connect_robust(url) as connection:
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        declared = await channel.declare_queue(queue, durable=True)
        inbox: asyncio.Queue[object] = asyncio.Queue()

        async def deliver(message: AbstractIncomingMessage) -> None:
            inbox.put_nowait(message)

        async def ack(message: object) -> None:
            assert isinstance(message, AbstractIncomingMessage)
            await message.ack(multiple=True)

        await declared.consume(deliver)
        return await _drain(inbox, count, ack)


async def consume_aiormq(url: str, queue: str, count: int, prefetch: int) -> float:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        await channel.basic_qos(prefetch_count=prefetch)
        await channel.queue_declare(queue, durable=True)
        inbox: asyncio.Queue[object] = asyncio.Queue()

        async def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            inbox.put_nowait(message)

        async def ack(message: object) -> None:
            assert isinstance(message, aiormq.abc.DeliveredMessage)
            await channel.basic_ack(message.delivery_tag or 0, multiple=True)

        await channel.basic_consume(queue, deliver, no_ack=False)
        return await _drain(inbox, count, ack)
    finally:
        await connection.close()


async def _delete(url: str, queue: str) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(queue)
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # The administrator's: scratch queues through the default exchange, which no service
    # account may use.
    url = rabbitmq.admin_url(load_stack_settings())
    stacks = {
        "aio-pika": (publish_aiopika, consume_aiopika),
        "aiormq": (publish_aiormq, consume_aiormq),
    }
    results: dict[tuple[str, str], list[float]] = {}
    for round_no in range(args.rounds):
        order = list(stacks) if round_no % 2 == 0 else list(reversed(stacks))
        for name in order:
            publish, consume = stacks[name]
            queue = f"bench-amqp-{uuid.uuid4().hex[:8]}"
            try:
                sent = await publish(url, queue, args.messages, args.inflight)
                drained = await consume(url, queue, args.messages, args.prefetch)
            finally:
                await _delete(url, queue)
            results.setdefault((name, "publish"), []).append(sent)
            results.setdefault((name, "consume"), []).append(drained)
            print(
                f"round {round_no + 1} {name:8}  publish {sent:8,.0f}/s  consume {drained:8,.0f}/s"
            )
    print("\nmedians")
    for path in ("publish", "consume"):
        line = "  ".join(
            f"{name} {statistics.median(results[name, path]):8,.0f}/s" for name in stacks
        )
        print(f"  {path:8} {line}")


if __name__ == "__main__":
    uvloop.run(main())
