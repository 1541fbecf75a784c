"""No way around the services on the cluster either: its Kafka nodes take only SASL/SCRAM over
TLS, with the same ACLs as `make up`'s node, and its RabbitMQ nodes only TLS, with an account
per role (`devstack.cluster` provisions both once the nodes formed their cluster)."""

from __future__ import annotations

import asyncio

import aiormq
import httpx
import pytest
from aiormq.exceptions import ChannelAccessRefused, ProbableAuthenticationError
from confluent_kafka import KafkaError, Producer

from devstack import identities, layout
from devstack import kafka as stack_kafka
from devstack.settings import StackSettings
from shop.messaging.kafka import producer_config
from shop.messaging.rabbitmq import Topology
from shop.settings import Kafka
from tests.support import topic_size

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def shop(clustered: StackSettings) -> StackSettings:
    """The settings the cluster's services run with (the order service's accounts)."""
    return layout.cluster_settings(clustered, layout.directory())


def _produce(kafka: Kafka, topic: str, *, timeout: float = 5.0) -> tuple[KafkaError, set[int]]:
    """Produce one message as the services do: the delivery report's error (it must fail) and
    the codes of whatever else librdkafka reported."""
    errors: list[KafkaError] = []
    config = {**producer_config(kafka, delivery_timeout=timeout), "error_cb": errors.append}
    config.pop("logger")
    producer = Producer(config)
    reports: list[KafkaError | None] = []
    producer.produce(topic, key=b"k", value=b"{}", on_delivery=lambda e, _m: reports.append(e))
    assert producer.flush(timeout + 10) == 0
    (report,) = reports
    assert report is not None, f"{kafka.user or 'no account'} wrote {topic}"
    return report, {err.code() for err in errors}


def test_only_the_order_service_writes_order_commands_on_the_clusters_kafka(
    shop: StackSettings,
) -> None:
    topic, admin = shop.kafka.topic, stack_kafka.as_admin(shop)
    assert len(shop.kafka.brokers.split(",")) == layout.NODES
    before = topic_size(admin, topic)
    for anonymous in (
        shop.kafka.model_copy(update={"security_protocol": "PLAINTEXT"}),  # no TLS, no account
        shop.kafka.model_copy(update={"security_protocol": "SSL"}),  # TLS, no account
    ):
        # Never delivered: the brokers drop a client that does not log in over TLS. (Whether
        # librdkafka also reports the dropped connections within the delivery timeout varies
        # with the machine's load, so they are not asserted; the topic's size below is.)
        report, _ = _produce(anonymous, topic)
        assert report.code() == KafkaError._MSG_TIMED_OUT, report
    products = shop.kafka.model_copy(
        update={"user": "products", "password": identities.password("kafka:products")}
    )
    report, _ = _produce(products, topic)  # authenticated, and refused by the ACLs
    assert report.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, report
    assert topic_size(admin, topic) == before


async def _connect(url: str) -> aiormq.abc.AbstractConnection:
    return await asyncio.wait_for(aiormq.connect(url), 10)


async def _connect_to(url: str) -> None:
    """Connect (raising what refuses it), then close again."""
    connection = await _connect(url)
    await connection.close()


async def test_the_clusters_rabbitmq_takes_tls_only_and_intake_cannot_read_orders(
    shop: StackSettings,
) -> None:
    rabbit = shop.rabbitmq  # HAProxy's AMQP front, which passes TLS through to a node
    assert rabbit.port == layout.AMQP_FRONT
    assert rabbit.ca_file is not None
    intake = await _connect(rabbit.url)  # TLS, the name 127.0.0.1 checked
    try:
        channel = await intake.channel()
        with pytest.raises(ChannelAccessRefused, match="ACCESS_REFUSED"):
            await asyncio.wait_for(channel.basic_get(Topology(rabbit).queue), 10)
    finally:
        await intake.close()
    with pytest.raises(ProbableAuthenticationError, match="ACCESS_REFUSED"):
        await _connect(rabbit.url_for("guest", "guest"))  # deleted
    nodes = layout.rabbitmq_nodes(layout.directory())
    for port in (rabbit.port, *(node.amqp_port for node in nodes)):
        plain = rabbit.model_copy(update={"ca_file": None, "port": port}).url
        with pytest.raises((aiormq.exceptions.AMQPError, ConnectionError, EOFError, TimeoutError)):
            await _connect_to(plain)
    management = f"http://127.0.0.1:{shop.stack.management_port}/api/overview"
    auth = (shop.stack.admin_user, shop.stack.admin_password)
    async with httpx.AsyncClient(auth=auth, timeout=10) as client:
        listeners = (await client.get(management)).json()["listeners"]
    amqp = {(listener["node"], listener["protocol"]) for listener in listeners}
    assert {(node.nodename, "amqp/ssl") for node in nodes} <= amqp, listeners
    assert not [node for node, protocol in amqp if protocol == "amqp"], listeners
