"""RabbitMQ's accounts without a broker: each role's permission patterns (what RabbitMQ matches
against an exchange's or queue's whole name, `re.fullmatch` here), the settings that name the
accounts and TLS, and what the local stack makes of them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from yarl import URL

from devstack import rabbitmq as stack_rabbitmq
from devstack.identities import Tls
from devstack.settings import StackSettings
from shop.messaging.rabbitmq import NOTHING, Permissions, Topology
from shop.settings import ConfigError, RabbitMQ, load_settings

# A name with characters that mean something in a regular expression.
QUEUE = "test-a.b+c-orders"
T = Topology(RabbitMQ(queue=QUEUE))
EVERY_NAME = [
    QUEUE,
    T.exchange,
    T.dlx,
    T.dlq,
    "amq.default",  # the default exchange, as RabbitMQ names it when it checks permissions
    "amq.direct",
    "amq.topic",
    "orders",
    "orders.exchange",
    f"{QUEUE}-mine",
    f"{QUEUE}.other",
    "test-aXb+c-orders",  # `.` taken literally
    "test-a.bbc-orders",  # `+` taken literally
    f"x{QUEUE}",
]  # not "": RabbitMQ checks the default exchange's permissions as amq.default


def _allowed(pattern: str) -> set[str]:
    return {name for name in EVERY_NAME if re.fullmatch(pattern, name)}


def _rabbit_matches(pattern: str, name: str) -> bool:
    """RabbitMQ matches a permission with re:run/2 (a search, anchored only by the pattern)."""
    return re.search(pattern, name) is not None


def test_intake_may_write_to_the_order_exchange_alone() -> None:
    configure, write, read = T.permissions("intake")
    assert _allowed(configure) == set()
    assert _allowed(write) == {T.exchange}
    assert _allowed(read) == set()


def test_the_consumer_may_declare_its_topology_consume_and_dead_letter_only() -> None:
    configure, write, read = T.permissions("consumer")
    # exchange.declare and queue.declare of the four names
    assert _allowed(configure) == {QUEUE, T.exchange, T.dlx, T.dlq}
    # queue.bind (the queues), queue.declare with a DLX and publishing dead letters (Q.dlx); not
    # the order exchange
    assert _allowed(write) == {QUEUE, T.dlq, T.dlx}
    # basic.consume and queue.declare with a DLX (Q), queue.bind's sources (Q.dlx, Q.exchange);
    # not the dead letters
    assert _allowed(read) == {QUEUE, T.dlx, T.exchange}


def test_patterns_are_anchored_as_rabbitmq_reads_them() -> None:
    for role in ("intake", "consumer"):
        for pattern in T.permissions(role):
            for name in EVERY_NAME:
                assert _rabbit_matches(pattern, name) == bool(re.fullmatch(pattern, name)), (
                    role,
                    pattern,
                    name,
                )


def test_one_account_with_both_roles_gets_the_union() -> None:
    both = T.permissions("intake", "consumer")
    intake, consumer = T.permissions("intake"), T.permissions("consumer")
    for kind in Permissions._fields:
        expected = _allowed(getattr(intake, kind)) | _allowed(getattr(consumer, kind))
        assert _allowed(getattr(both, kind)) == expected
    assert T.permissions() == Permissions(NOTHING, NOTHING, NOTHING)


def test_the_consumers_use_their_own_account_or_else_rabbitmq_user() -> None:
    shared = RabbitMQ(user="app", password="pw")
    assert shared.consumer_url == shared.url
    own = RabbitMQ(user="in", password="a", consumer_user="out", consumer_password="b")
    assert (URL(own.url).user, URL(own.url).password) == ("in", "a")
    assert (URL(own.consumer_url).user, URL(own.consumer_url).password) == ("out", "b")


def test_a_consumer_account_needs_both_its_user_and_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RABBITMQ_CONSUMER_USER", "out")
    monkeypatch.delenv("RABBITMQ_CONSUMER_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="RABBITMQ_CONSUMER_PASSWORD"):
        load_settings()
    monkeypatch.setenv("RABBITMQ_CONSUMER_PASSWORD_FILE", str(tmp_path / "secret"))
    (tmp_path / "secret").write_text("b\n")
    assert load_settings().rabbitmq.consumer_password == "b"


def test_a_ca_file_makes_the_url_amqps_with_that_ca_and_any_password_survives() -> None:
    awkward = "p@ss:w/rd?#%&"
    plain = RabbitMQ(user="u", password=awkward, vhost="/", ca_file="")
    assert plain.ca_file is None
    assert URL(plain.url).scheme == "amqp"
    assert URL(plain.url).password == awkward
    tls = RabbitMQ(user="u", password=awkward, vhost="test run", ca_file="/x y/ca.pem")
    url = URL(tls.url)
    assert (url.scheme, url.host, url.port) == ("amqps", "127.0.0.1", 5672)
    assert url.query["cafile"] == "/x y/ca.pem"
    assert url.password == awkward
    assert url.raw_path == "/test%20run"


def test_the_stack_makes_one_account_per_role_or_one_for_both() -> None:
    rabbit = RabbitMQ(user="in", password="a", consumer_user="out", consumer_password="b")
    two = StackSettings(rabbitmq=rabbit)
    assert stack_rabbitmq.accounts(two) == {"in": ("a", ("intake",)), "out": ("b", ("consumer",))}
    one = StackSettings(rabbitmq=RabbitMQ(user="app", password="a"))
    assert stack_rabbitmq.accounts(one) == {"app": ("a", ("intake", "consumer"))}


def test_the_single_node_listens_with_tls_only(tmp_path: Path) -> None:
    tls = Tls(tmp_path / "ca", tmp_path / "cert", tmp_path / "key")
    node = stack_rabbitmq.RabbitNode(
        name="rabbitmq",
        nodename="shop@localhost",
        amqp_port=35672,
        management_port=45672,
        dist_port=55672,
        directory=tmp_path,
        home=tmp_path,
        tls=tls,
    )
    config = stack_rabbitmq.listener_config(node)
    assert "listeners.tcp = none\n" in config
    assert "listeners.ssl.default = 127.0.0.1:35672\n" in config
    assert f"ssl_options.keyfile = {tmp_path / 'key'}\n" in config
    assert "RABBITMQ_NODE_PORT" not in stack_rabbitmq.node_env(node)
    plain = dataclasses.replace(node, tls=None)
    assert stack_rabbitmq.listener_config(plain) == ""
    assert stack_rabbitmq.node_env(plain)["RABBITMQ_NODE_PORT"] == "35672"
