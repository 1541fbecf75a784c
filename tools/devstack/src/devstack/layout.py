"""The cluster's layout: every node's ports and files, the services' processes and settings,
HAProxy's fronts. Pure (nothing starts here), so the unit tests read exactly what runs."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import haproxy, identities, jaeger, kafka, mariadb, rabbitmq
from .common import HOST, stack_dir
from .services import _settings_env
from .settings import StackSettings

NODES = 3
REPLICAS = 2  # per HTTP service
CONSUMERS = (("kafka", 1), ("kafka", 2), ("rabbitmq", 1), ("rabbitmq", 2))
MYSQL_FRONT = 13306
AMQP_FRONT = 13370
EPMD_PORT = 13369
STATS_PORT = 13399
CLUSTER_NAME = "shop-cluster"
SST_USER = "shop_sst"
READY_TIMEOUT = 60.0


def directory() -> Path:
    return stack_dir() / "cluster"


# --- the layout: ports and node specs (pure, so the unit tests can read them) --------------


def galera_nodes(base: Path, sst_password: str = "") -> list[mariadb.MariaNode]:
    members = tuple(13320 + n for n in range(1, NODES + 1))
    return [
        mariadb.MariaNode(
            name=f"galera-{n}",
            port=13310 + n,
            directory=base / f"galera-{n}",
            galera=mariadb.Galera(
                node_name=f"galera-{n}",
                cluster_name=CLUSTER_NAME,
                gcomm_port=13320 + n,
                ist_port=13330 + n,
                sst_port=13340 + n,
                members=members,
                sst_user=SST_USER,
                sst_password=sst_password,
            ),
        )
        for n in range(1, NODES + 1)
    ]


def kafka_nodes(base: Path) -> list[kafka.KafkaNode]:
    voters = ",".join(f"{n}@{HOST}:{13360 + n}" for n in range(1, NODES + 1))
    return [
        kafka.KafkaNode(
            name=f"kafka-{n}",
            node_id=n,
            broker_port=13350 + n,
            controller_port=13360 + n,
            directory=base / f"kafka-{n}",
            voters=voters,
            cluster_id_file=base / "kafka.cluster.id",
            replication_factor=NODES,
        )
        for n in range(1, NODES + 1)
    ]


def rabbitmq_nodes(base: Path) -> list[rabbitmq.RabbitNode]:
    tls = identities.tls()  # the stack's server certificate: localhost and 127.0.0.1
    return [
        rabbitmq.RabbitNode(
            name=f"rabbitmq-{n}",
            nodename=f"{CLUSTER_NAME}-{n}@localhost",
            amqp_port=AMQP_FRONT + n,
            management_port=13380 + n,
            dist_port=13390 + n,
            directory=base / f"rabbitmq-{n}",
            home=base / "rabbitmq-home",  # one Erlang cookie for the three nodes
            epmd_port=EPMD_PORT,
            tls=tls,
        )
        for n in range(1, NODES + 1)
    ]


@dataclass(frozen=True)
class Process:
    """A replica of an HTTP service or a consumer process: its name, command and port."""

    name: str
    argv: tuple[str, ...]
    port: int  # HTTP port, or the consumer's health port
    env: dict[str, str]


def cluster_settings(settings: StackSettings, base: Path) -> StackSettings:
    """The services' settings on the cluster: the fronts, every Kafka node, RF 3, quorum
    queues. Accounts, passwords and CA stay `settings`' (the stack's identities), as on
    `make up`'s stack: the cluster's servers take the same accounts over TLS."""
    brokers = ",".join(node.bootstrap for node in kafka_nodes(base))
    return settings.replace(
        db_port=MYSQL_FRONT,
        kafka_brokers=brokers,
        kafka_replication_factor=NODES,
        rabbitmq_port=AMQP_FRONT,
        rabbitmq_management_port=rabbitmq_nodes(base)[0].management_port,
        rabbitmq_queue_type="quorum",
        auth_public_key_file=str(base / "auth" / "public.pem"),
        auth_signing_key_file=str(base / "auth" / "signing.pem"),
    )


def _service_env(shop: StackSettings, service: identities.Service) -> dict[str, str]:
    """`shop` (the cluster's settings) as `service`'s environment, with its own accounts on
    every server (`identities.service_env`), one worker per process."""
    return {**_settings_env(shop, service), "WORKERS": "1"}


def processes(settings: StackSettings, base: Path, *, tracing: bool = False) -> list[Process]:
    """Two replicas per HTTP service (one worker each), and the consumer processes; with
    `tracing`, each sending every trace to Jaeger (`jaeger.service_env`)."""
    shop = cluster_settings(settings, base)
    traces = jaeger.service_env(settings) if tracing else {}
    found: list[Process] = []
    services: tuple[tuple[identities.Service, int], ...] = (("products", 13410), ("orders", 13420))
    for service, first in services:
        for n in range(1, REPLICAS + 1):
            port = first + n
            env = _service_env(shop, service) | traces
            env[f"{service[:-1].upper()}_SERVICE_PORT"] = str(port)
            if service == "orders":  # consumers and the order outbox relay run on their own
                env |= {"CONSUMERS_ENABLED": "false", "OUTBOX_RELAY_ENABLED": "false"}
            serve = (sys.executable, "-m", "shop", "serve", service)
            found.append(Process(f"{service}-{n}", serve, port, env))
    for index, (channel, n) in enumerate(CONSUMERS, start=1):
        port = 13430 + index
        consume = (
            sys.executable, "-m", "shop", "consume", channel, "--health-port", str(port),
        )  # fmt: skip
        env = _service_env(shop, "orders") | traces
        found.append(Process(f"consumer-{channel}-{n}", consume, port, env))
    return found


def fronts(settings: StackSettings, base: Path) -> haproxy.Fronts:
    procs = {p.name: p for p in processes(settings, base)}

    def replicas(service: str) -> list[haproxy.Backend]:
        return [
            haproxy.Backend(f"{service}-{n}", procs[f"{service}-{n}"].port)
            for n in range(1, REPLICAS + 1)
        ]

    return haproxy.Fronts(
        mysql_port=MYSQL_FRONT,
        galera=[haproxy.Backend(n.name, n.port) for n in galera_nodes(base)],
        amqp_port=AMQP_FRONT,
        rabbitmq=[haproxy.Backend(n.name, n.amqp_port) for n in rabbitmq_nodes(base)],
        http=[
            ("products", settings.http.product_port, replicas("products")),
            ("orders", settings.http.order_port, replicas("orders")),
        ],
        stats_port=STATS_PORT,
    )
