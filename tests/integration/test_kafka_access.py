"""Who may do what on the real broker (`make up`'s: SASL/SCRAM-SHA-512 over TLS, ACLs made by
`devstack.kafka.provision`): no anonymous client gets in, and each service's principal writes
and reads only its own topics, in its own group.

The test's own names (`test-<run>-access-…`), provisioned as `make up` provisions the default
ones, so no service of the session competes for its group."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from devstack import identities
from devstack import kafka as stack_kafka
from devstack.settings import StackSettings
from shop.messaging.kafka import client_config, ensure_topics, producer_config
from shop.settings import Kafka
from tests.conftest import RUN
from tests.support import eventually, topic_size

pytestmark = pytest.mark.integration

_BINDING_FIELDS = (
    "restype", "name", "resource_pattern_type", "principal", "host", "operation", "permission_type"
)  # fmt: skip


@dataclass
class Errors:
    """What librdkafka reported through the error callback and in delivery reports."""

    seen: list[KafkaError] = field(default_factory=list)

    def __call__(self, err: KafkaError) -> None:
        self.seen.append(err)

    def codes(self) -> set[int]:
        return {err.code() for err in self.seen}


@pytest.fixture(scope="module")
def names(settings: StackSettings) -> Iterator[StackSettings]:
    """The stack's settings with this module's topics and group, the ACLs on them made (as
    `make up` makes them on the default names) and taken away at the end with the topics."""
    if not settings.kafka.security_protocol.startswith("SASL_"):
        pytest.skip("the broker takes anyone (KAFKA_SECURITY_PROTOCOL without SASL)")
    prefix = f"test-{RUN}-access-{uuid.uuid4().hex[:6]}"
    mine = settings.replace(
        kafka_topic=f"{prefix}-orders",
        kafka_order_events_topic=f"{prefix}-order-events",
        kafka_dlq_topic=f"{prefix}-orders.dlq",
        kafka_product_events_topic=f"{prefix}-product-events",
        kafka_consumer_group=f"{prefix}-order-service",
    )
    stack_kafka.provision(mine)
    k = mine.kafka
    topics = [k.topic, k.order_events_topic, k.dlq_topic, k.product_events_topic]
    admin = stack_kafka.as_admin(mine)
    asyncio.run(ensure_topics(admin, topics, timeout=15))
    asyncio.run(eventually(partial(_led, admin, topics), timeout=30, what="the topics' leaders"))
    yield mine
    stack_kafka.revoke(mine, prefix)
    client = AdminClient(client_config(admin))
    for future in client.delete_topics(topics, operation_timeout=10).values():
        future.result(timeout=15)


async def _led(admin: Kafka, topics: list[str]) -> bool:
    """Every partition of `topics` has a leader that answers (just after their creation, a
    partition's leader may not know it is one yet)."""
    for topic in topics:
        await asyncio.to_thread(topic_size, admin, topic)
    return True


def _as(settings: StackSettings, principal: str, **changes: Any) -> Kafka:
    """`settings.kafka` as one of the stack's principals (its generated password)."""
    account = {"user": principal, "password": identities.password(f"kafka:{principal}")}
    return settings.kafka.model_copy(update={**account, **changes})


def _produce(
    kafka: Kafka, topic: str, *, timeout: float = 10.0
) -> tuple[KafkaError | None, Errors]:
    """Produce one message as the services do (idempotent, acks=all): the delivery report's
    error (None: delivered) and whatever else librdkafka reported."""
    errors = Errors()
    config = {**producer_config(kafka, delivery_timeout=timeout), "error_cb": errors}
    config.pop("logger")
    producer = Producer(config)
    reports: list[KafkaError | None] = []
    producer.produce(
        topic, key=b"k", value=b"access-test", on_delivery=lambda e, _m: reports.append(e)
    )
    assert producer.flush(timeout + 10) == 0
    (report,) = reports
    return report, errors


def _consume(
    kafka: Kafka,
    topic: str,
    *,
    group: str,
    subscribe: bool = True,
    until: int | None = None,
    seconds: float = 15.0,
) -> tuple[list[bytes], Errors]:
    """Read `topic` from its start in `group` (or with its partitions assigned): the values
    read until one arrives or the error `until` (any error without it) is seen, within
    `seconds`, and the errors seen."""
    errors = Errors()
    consumer = Consumer(
        {
            **client_config(kafka),
            "error_cb": errors,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[bytes] = []
    try:
        if subscribe:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not values:
            if errors.seen and (until is None or until in errors.codes()):
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if (err := msg.error()) is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    errors.seen.append(err)
                continue
            values.append(msg.value() or b"")
    finally:
        consumer.close()
    return values, errors


def test_a_client_without_credentials_cannot_write_the_order_topic(names: StackSettings) -> None:
    topic = names.kafka.topic
    before = topic_size(stack_kafka.as_admin(names), topic)
    for anonymous in (
        names.kafka.model_copy(update={"security_protocol": "PLAINTEXT"}),  # no TLS, no account
        names.kafka.model_copy(update={"security_protocol": "SSL"}),  # TLS, no account
    ):
        report, errors = _produce(anonymous, topic, timeout=5)
        assert report is not None
        assert report.code() == KafkaError._MSG_TIMED_OUT, report
        assert errors.codes() & {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}, errors
    assert topic_size(stack_kafka.as_admin(names), topic) == before


def test_a_wrong_password_is_refused_as_an_authentication_failure(names: StackSettings) -> None:
    wrong = _as(names, "orders", password="not-" + identities.password("kafka:orders"))
    report, errors = _produce(wrong, names.kafka.topic, timeout=5)
    assert report is not None
    assert KafkaError._AUTHENTICATION in errors.codes(), errors
    reason = next(e.str() for e in errors.seen if e.code() == KafkaError._AUTHENTICATION)
    assert "SASL authentication error" in reason
    assert wrong.password not in reason


def test_the_product_service_cannot_write_nor_read_order_commands(names: StackSettings) -> None:
    products = _as(names, "products")
    report, _ = _produce(products, names.kafka.topic)
    assert report is not None
    assert report.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, report
    # Even in a group of its own (allowed here for this test alone), the topic is refused.
    group = f"{names.kafka.consumer_group}-products"
    allowed = AclBinding(
        ResourceType.GROUP,
        group,
        ResourcePatternType.LITERAL,
        "User:products",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    admin = stack_kafka.admin_client(stack_kafka.as_admin(names))
    admin.create_acls([allowed])[allowed].result(timeout=15)
    try:
        denied = KafkaError.TOPIC_AUTHORIZATION_FAILED
        values, errors = _consume(products, names.kafka.topic, group=group, until=denied)
    finally:
        filter_ = AclBindingFilter(*(getattr(allowed, f) for f in _BINDING_FIELDS))
        admin.delete_acls([filter_])[filter_].result(timeout=15)
    assert values == []
    assert denied in errors.codes(), errors


def test_the_product_service_writes_its_events(names: StackSettings) -> None:
    report, _ = _produce(_as(names, "products"), names.kafka.product_events_topic)
    assert report is None


def test_the_order_service_cannot_write_product_events(names: StackSettings) -> None:
    report, _ = _produce(_as(names, "orders"), names.kafka.product_events_topic)
    assert report is not None
    assert report.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, report


def test_the_order_service_writes_its_topics(names: StackSettings) -> None:
    orders = _as(names, "orders")
    k = names.kafka
    for topic in (k.order_events_topic, k.dlq_topic):
        report, _ = _produce(orders, topic)
        assert report is None, (topic, report)


def test_the_order_service_reads_order_commands_in_its_group_only(names: StackSettings) -> None:
    orders = _as(names, "orders")
    report, _ = _produce(orders, names.kafka.topic)
    assert report is None
    values, errors = _consume(orders, names.kafka.topic, group=names.kafka.consumer_group)
    assert values == [b"access-test"], errors
    other = f"{names.kafka.consumer_group}-other"
    values, errors = _consume(orders, names.kafka.topic, group=other)
    assert values == []
    assert KafkaError.GROUP_AUTHORIZATION_FAILED in errors.codes(), errors


def test_provisioning_again_changes_nothing(names: StackSettings) -> None:
    stack_kafka.provision(names)
    stack_kafka.provision(names)
    report, _ = _produce(_as(names, "orders"), names.kafka.topic)
    assert report is None
