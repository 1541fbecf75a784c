"""Baseline access: a bench base from before the services had accounts logs in as it did then.

`make up`'s servers ask every connection for TLS and an account of its own (issue 22), so a
base commit from before that (plain Kafka and AMQP, one database account without TLS) cannot
log in. While `bench.compare` or `bench.cpu` runs such a base, `baseline_access` opens, for that
side's own names only:

- MariaDB: an account without TLS holding every right on the side's database (`shop_cmp_base`),
  which the base migrates and uses;
- Kafka: a PLAINTEXT listener on 127.0.0.1 (the broker restarts to open it), where clients are
  ANONYMOUS, and ACLs letting ANONYMOUS do anything on topics and groups whose names start
  with the side's prefix (`bench-cmp-base-`), nothing else;
- RabbitMQ: a plain AMQP listener on 127.0.0.1 (opened in the running node) and a user with
  every right on the side's own vhost, nothing else.

Afterwards (also when the run fails or is stopped) it closes all of it: the accounts and ACLs
are deleted, the RabbitMQ listener stopped, and Kafka restarted without its plain listener. A
killed run leaves them until the next bench run's `clean` (accounts, ACLs) and `make up`
(Kafka's configuration; RabbitMQ restarts without the listener). The head keeps its own
accounts over TLS, so the side by side includes what TLS and SASL cost it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack import kafka as stack_kafka
from devstack import mariadb, rabbitmq
from devstack.settings import StackSettings

if TYPE_CHECKING:
    from bench.compare import Side

# What a checkout that connects with accounts of its own says in its settings.
_SECURE_MARK = "KAFKA_SECURITY_PROTOCOL"


def needs_baseline_access(checkout: Path) -> bool:
    """Whether a checkout predates the services' own accounts (its code never names
    KAFKA_SECURITY_PROTOCOL)."""
    return not any(
        _SECURE_MARK in path.read_text(errors="replace")
        for path in (checkout / "src").rglob("*.py")
    )


def account(side_name: str) -> str:
    """The database and RabbitMQ account of a side's baseline access."""
    return f"shop_bench_{side_name}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def forget(settings: StackSettings, sides: Sequence[Side]) -> None:
    """Delete the accounts a run (or a killed one) made for these sides; their Kafka ACLs go
    with the side's names (`compare.clean` revokes by prefix)."""
    for side in sides:
        mariadb.drop_account(account(side.name))
        rabbitmq.delete_user(settings, account(side.name))


def anonymous_acls(prefix: str) -> list[Any]:
    """What ANONYMOUS (a client of the plain listener) may do: anything on the topics and the
    groups whose names start with a side's prefix, nothing else (no cluster rights)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    if not prefix.startswith("bench-"):
        raise ValueError(f"baseline access is for a bench side's names, not {prefix!r}")
    return [
        AclBinding(
            kind,
            prefix,
            ResourcePatternType.PREFIXED,
            "User:ANONYMOUS",
            "*",
            AclOperation.ALL,
            AclPermissionType.ALLOW,
        )
        for kind in (ResourceType.TOPIC, ResourceType.GROUP)
    ]


def _grant_anonymous(settings: StackSettings, prefix: str) -> None:
    admin = stack_kafka.admin_client(stack_kafka.as_admin(settings))
    for future in admin.create_acls(anonymous_acls(prefix), request_timeout=30).values():
        future.result(timeout=30)


@contextlib.contextmanager
def baseline_access(settings: StackSettings, sides: Sequence[Side]) -> Iterator[None]:
    """Open baseline access for every side that needs it (its `env` then logs in through it,
    and `side.baseline` is set), and close it all at the end."""
    old = [side for side in sides if needs_baseline_access(side.checkout)]
    if not old:
        yield
        return
    node = stack_kafka.single_node(settings)
    kafka_port, amqp_port = _free_port(), _free_port()
    try:
        print(f"baseline access: Kafka restarts with a plain listener on {kafka_port}", flush=True)
        stack_kafka.start_node(dataclasses.replace(node, plain_port=kafka_port))
        rabbitmq.open_plain_listener(settings, amqp_port)
        for side in old:
            password = secrets.token_urlsafe(24)
            user = account(side.name)
            mariadb.open_baseline_account(user, password, side.db_name)
            rabbitmq.baseline_user(
                settings.replace(rabbitmq_vhost=side.env["RABBITMQ_VHOST"]), user, password
            )
            _grant_anonymous(settings, side.prefix)
            side.baseline = True
            side.env.update(
                {
                    "DB_USER": user,
                    "DB_PASSWORD": password,
                    "DB_MIGRATE_USER": user,  # bases that migrate with an account of their own
                    "DB_MIGRATE_PASSWORD": password,
                    "KAFKA_BROKERS": f"127.0.0.1:{kafka_port}",
                    "RABBITMQ_PORT": str(amqp_port),
                    "RABBITMQ_USER": user,
                    "RABBITMQ_PASSWORD": password,
                }
            )
            print(
                f"baseline access: {side.name} ({side.commit[:12]}) predates the services' "
                f"accounts; it logs in as {user} without TLS, to its own names only",
                flush=True,
            )
        yield
    finally:
        with contextlib.suppress(Exception):
            forget(settings, old)
        with contextlib.suppress(Exception):
            rabbitmq.close_plain_listener(settings, amqp_port)
        for side in old:
            with contextlib.suppress(Exception):
                stack_kafka.revoke(settings, side.prefix)
        print("baseline access closed: Kafka restarts without its plain listener", flush=True)
        stack_kafka.start_node(node)
