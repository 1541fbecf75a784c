"""Who may do what on the real RabbitMQ, as the local stack provisions it (`devstack.rabbitmq
.provision`): each role's account may do what its role needs and is refused the rest
(ACCESS_REFUSED), over TLS only; a refused account is logged as such, without its password.

On a vhost of this module's own, provisioned for its own names as `make up` provisions "/".
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial

import aiormq
import certifi
import httpx
import pytest
from aiormq.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import ChannelAccessRefused, ProbableAuthenticationError

from devstack import identities, rabbitmq
from devstack.settings import StackSettings
from shop.messaging.rabbitmq import RabbitBroker, Topology
from tests.conftest import RUN
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own(settings: StackSettings, rabbitmq_cleanup: None) -> Iterator[StackSettings]:
    """The settings on a vhost and queue of this module's own, provisioned (then removed)."""
    name = f"test-{RUN}-access"
    mine = settings.replace(rabbitmq_vhost=name, rabbitmq_queue=f"{name}-orders")
    rabbitmq.provision(mine)
    yield mine
    rabbitmq.remove_vhost(mine)


async def _connect(settings: StackSettings, user: str, password: str) -> AbstractConnection:
    return await asyncio.wait_for(aiormq.connect(settings.rabbitmq.url_for(user, password)), 10)


async def _connect_to(url: str) -> None:
    """Connect (raising what refuses it), then close again."""
    connection = await asyncio.wait_for(aiormq.connect(url), 10)
    await connection.close()


@pytest.fixture
async def intake(own: StackSettings) -> AsyncIterator[AbstractConnection]:
    connection = await _connect(own, own.rabbitmq.user, own.rabbitmq.password)
    yield connection
    await connection.close()


@pytest.fixture
async def consumer(own: StackSettings) -> AsyncIterator[AbstractConnection]:
    user, password = own.rabbitmq.consumer_user, own.rabbitmq.consumer_password
    assert user is not None, "the stack gives the consumers an account"
    assert password is not None
    connection = await _connect(own, user, password)
    yield connection
    await connection.close()


@pytest.fixture
async def admin(own: StackSettings) -> AsyncIterator[AbstractConnection]:
    connection = await _connect(own, own.stack.admin_user, own.stack.admin_password)
    yield connection
    await connection.close()


Operation = Callable[[AbstractChannel], Awaitable[object]]


async def _refused(connection: AbstractConnection, operation: Operation) -> bool:
    """Whether RabbitMQ refuses `operation` (ACCESS_REFUSED closes the channel it ran on)."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        await asyncio.wait_for(operation(channel), 10)
    except ChannelAccessRefused as refusal:
        return "ACCESS_REFUSED" in str(refusal)
    await channel.close()
    return False


async def _publish(channel: AbstractChannel, exchange: str, routing_key: str) -> object:
    return await channel.basic_publish(
        b"{}", exchange=exchange, routing_key=routing_key, mandatory=True
    )


async def _get(channel: AbstractChannel, queue: str) -> object:
    return await channel.basic_get(queue, no_ack=False)


async def test_intake_may_publish_to_the_order_exchange_and_do_nothing_else(
    own: StackSettings, intake: AbstractConnection, admin: AbstractConnection
) -> None:
    t = Topology(own.rabbitmq)
    channel = await intake.channel(publisher_confirms=True)
    await channel.exchange_declare(t.exchange, passive=True)  # as intake checks it
    marker = uuid.uuid4().hex.encode()
    await channel.basic_publish(marker, exchange=t.exchange, routing_key=t.queue, mandatory=True)
    # ... and it arrived in the order queue
    reader = await admin.channel()
    got = await reader.basic_get(t.queue, no_ack=True)
    assert got.body == marker
    forbidden: dict[str, Operation] = {
        "read the order queue": partial(_get, queue=t.queue),
        "read the dead letters": partial(_get, queue=t.dlq),
        "publish to the queue through the default exchange": partial(
            _publish, exchange="", routing_key=t.queue
        ),
        "publish to the dead-letter exchange": partial(_publish, exchange=t.dlx, routing_key=t.dlq),
        "publish to amq.direct": partial(_publish, exchange="amq.direct", routing_key=t.queue),
        "declare its exchange (not passively)": lambda c: c.exchange_declare(
            t.exchange, durable=True
        ),
        "delete its exchange": lambda c: c.exchange_delete(t.exchange),
        "declare a queue": lambda c: c.queue_declare(f"{t.queue}-mine", durable=True),
        "delete the order queue": lambda c: c.queue_delete(t.queue),
        "purge the order queue": lambda c: c.queue_purge(t.queue),
        "bind the order queue": lambda c: c.queue_bind(t.queue, t.exchange, routing_key="x"),
    }
    allowed = [what for what, op in forbidden.items() if not await _refused(intake, op)]
    assert allowed == [], f"intake may {allowed}"


async def test_the_consumer_may_declare_read_and_dead_letter_but_not_publish_orders(
    own: StackSettings, consumer: AbstractConnection
) -> None:
    t = Topology(own.rabbitmq)
    channel = await consumer.channel(publisher_confirms=True)
    await t.declare(channel, 10)  # the consumers' whole declaration
    await channel.basic_get(t.queue, no_ack=False)
    await channel.basic_publish(b"{}", exchange=t.dlx, routing_key=t.dlq, mandatory=True)
    forbidden: dict[str, Operation] = {
        "publish to the order exchange": partial(
            _publish, exchange=t.exchange, routing_key=t.queue
        ),
        "publish through the default exchange": partial(_publish, exchange="", routing_key=t.queue),
        "read the dead letters": partial(_get, queue=t.dlq),
        "declare another queue": lambda c: c.queue_declare(f"{t.queue}-mine", durable=True),
        "declare another exchange": lambda c: c.exchange_declare(f"{t.queue}.other"),
        "bind its queue to amq.direct": lambda c: c.queue_bind(t.queue, "amq.direct"),
    }
    allowed = [what for what, op in forbidden.items() if not await _refused(consumer, op)]
    assert allowed == [], f"the consumer may {allowed}"


async def test_wrong_or_missing_credentials_are_refused(own: StackSettings) -> None:
    # The product service's identity has no RabbitMQ account at all: it is left with the
    # defaults (config.yaml's guest), which the stack's node does not have.
    assert not [name for name in identities.service_env("products") if "RABBITMQ" in name]
    attempts = [
        ("guest", "guest"),
        (own.rabbitmq.user, "not-" + own.rabbitmq.password),
        (str(own.rabbitmq.consumer_user), own.rabbitmq.password),  # intake's password
    ]
    for user, password in attempts:
        with pytest.raises(ProbableAuthenticationError, match="ACCESS_REFUSED"):
            await _connect(own, user, password)


async def test_only_tls_connections_with_a_verified_certificate_reach_the_node(
    own: StackSettings,
) -> None:
    rabbit = own.rabbitmq
    # Plain AMQP as intake, to the one AMQP port: no AMQP answer (the node waits for TLS).
    plain = rabbit.model_copy(update={"ca_file": None}).url
    with pytest.raises((aiormq.exceptions.AMQPError, ConnectionError, EOFError, TimeoutError)):
        await _connect_to(plain)
    # No plain AMQP listener on any port.
    management = f"http://{rabbit.host}:{own.stack.management_port}/api/overview"
    auth = (own.stack.admin_user, own.stack.admin_password)
    async with httpx.AsyncClient(auth=auth, timeout=10) as client:
        listeners = (await client.get(management)).json()["listeners"]
    protocols = {listener["protocol"] for listener in listeners}
    assert "amqp/ssl" in protocols
    assert "amqp" not in protocols, listeners
    # TLS trusting other CAs than the stack's (the public ones): the certificate is refused.
    other_ca = rabbit.model_copy(update={"ca_file": certifi.where()})
    with pytest.raises((ssl.SSLError, aiormq.exceptions.AMQPConnectionError), match="certif"):
        await _connect_to(other_ca.url)


@pytest.mark.parametrize("refused", ["password", "vhost"])
async def test_a_refused_account_is_logged_as_such_without_its_password_and_fails_the_check(
    own: StackSettings, caplog: pytest.LogCaptureFixture, refused: str
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    if refused == "password":
        rabbit = own.rabbitmq.model_copy(update={"password": wrong})
    else:  # the right account, on a vhost where it has no permissions (none exists)
        rabbit = own.rabbitmq.model_copy(update={"vhost": f"test-{RUN}-nowhere"})
    broker = RabbitBroker(rabbit, timeout=5)
    caplog.set_level(logging.INFO, logger="shop.messaging.rabbitmq")
    broker.start()
    try:

        async def logged() -> bool:
            return "ACCESS_REFUSED" in caplog.text

        await eventually(logged, timeout=15, what="the refusal logged")
        with pytest.raises(ConnectionError):
            await broker.check(timeout=5)
    finally:
        await broker.close()
    refusal = next(r for r in caplog.records if "ACCESS_REFUSED" in r.getMessage())
    assert refusal.levelno == logging.ERROR
    assert repr(own.rabbitmq.user) in refusal.getMessage()
    assert repr(rabbit.vhost) in refusal.getMessage()
    assert "RABBITMQ_PASSWORD" in refusal.getMessage()
    assert wrong not in caplog.text
    assert own.rabbitmq.password not in caplog.text
