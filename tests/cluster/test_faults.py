"""The fault test: the clustered system loses, duplicates and oversells nothing when any one node
dies under load (bench.faults is the drill; this test starts the cluster, runs it and checks it).

The cluster runs on its own ports (above 13300) and state (`<stack>/cluster`), beside the
single-node stack the rest of the suite uses; its HTTP fronts take two free ports here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import aio_pika
import pytest
from bench.faults import describe, drill, write

from devstack import cluster, layout
from devstack.settings import StackSettings, load_stack_settings
from shop.messaging.rabbitmq import RabbitBroker
from shop.settings import RabbitMQ
from tests.support import confirmed, free_port

pytestmark = [pytest.mark.cluster]

# The share of attempts answered 5xx or cut (not connected, reset, timed out) over the whole run,
# every fault included. Measured 2026-11-27 on this machine kind: 0.16 % to 0.52 % (23 of 13,976
# at best; the worst window, the Kafka leader's 12 s down, 3.2 %); docs/scaling.md.
FAILED_SHARE_BOUND = 0.03
# Each fault's clients see their last failure while the killed part is still down (it stays
# down `hold` seconds): the system failed over without it. Measured: at most 6.1 s (Galera).


@pytest.fixture(scope="module")
def clustered() -> Iterator[StackSettings]:
    settings = load_stack_settings().replace(
        product_service_port=free_port(), order_service_port=free_port()
    )
    cluster.up(settings)
    try:
        yield settings
    finally:
        cluster.down(settings)


async def test_no_order_lost_duplicated_or_oversold_when_any_one_node_dies(
    clustered: StackSettings,
) -> None:
    result = await drill(clustered)
    write(result)
    report = "\n".join(describe(result))
    found, load = result["audit"], result["load"]
    assert [f["fault"] for f in result["faults"]] == [
        "kafka partition leader",
        "quorum queue leader",
        "galera writer",
        "one replica of each service",
    ], report
    assert load["orders_accepted"] > 500, report  # the load ran through every fault
    assert (found["lost"], found["duplicated"], found["oversold"]) == (0, 0, 0), report
    assert load["orders_abandoned"] == 0, report
    assert result["unexpected_answers"] == [], report
    assert load["failed_share"] < FAILED_SHARE_BOUND, report
    for fault in result["faults"]:
        assert fault["recovered_after_s"] < result["hold_s"] - 1, report
    # every part is back: each node, HAProxy and each process runs and answers its check
    rows = await asyncio.to_thread(cluster.status, clustered)
    parts = {name: state for name, state in rows if not name.startswith(" ")}
    assert all(state.startswith("running") for state in parts.values()), parts


async def test_a_publisher_connected_while_the_queue_leader_is_lost_is_confirmed_again_soon(
    clustered: StackSettings,
) -> None:
    # A channel opened between the leader's death and the election keeps addressing the dead
    # leader: on RabbitMQ 3.10 every publish on it is nacked until that node returns (the drill
    # saw 12 s of 503s). The publisher opens a new channel after a nack (shop.messaging.rabbitmq).
    shop = layout.cluster_settings(clustered, layout.directory())
    nodes = {n.name: n for n in layout.rabbitmq_nodes(layout.directory())}
    queue = f"test-probe-{uuid.uuid4().hex[:8]}"

    def at(port: int) -> RabbitMQ:
        update = {"host": "127.0.0.1", "port": port, "vhost": "/", "queue": queue}
        return shop.rabbitmq.model_copy(update={**update, "queue_type": "quorum"})

    declaring = RabbitBroker(at(shop.rabbitmq.port), timeout=5.0, intake=False)
    consuming = declaring.consumer(1)  # a consumer declares the topology; intake only uses it
    await asyncio.wait_for(consuming.consuming.wait(), 30)
    await declaring.close()
    leader = await asyncio.to_thread(cluster.quorum_queue_leader, clustered, queue)
    survivor = next(name for name in nodes if name != leader)
    publisher = RabbitBroker(at(nodes[survivor].amqp_port), timeout=5.0)
    await asyncio.to_thread(cluster.kill, clustered, leader)
    killed = time.monotonic()
    try:
        publisher.start()  # connects within milliseconds of the kill
        while not await confirmed(publisher):  # the leader stays down all along
            assert time.monotonic() - killed < 8.0, "still refused 8 s after the leader died"
            await asyncio.sleep(0.1)
    finally:
        await publisher.close()
        await asyncio.to_thread(cluster.revive, clustered, leader)
        connection = await aio_pika.connect(at(shop.rabbitmq.port).url, timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await channel.queue_delete(f"{queue}.dlq")
            await channel.exchange_delete(f"{queue}.dlx")
            await channel.exchange_delete(f"{queue}.exchange")
