"""`devstack cluster`'s generated layout and configs, read without starting anything."""

from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509

from devstack import haproxy, identities, kafka, mariadb, rabbitmq
from devstack import layout as cluster
from devstack.settings import StackSettings, load_stack_settings
from shop.settings import load_settings


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StackSettings:
    monkeypatch.chdir(tmp_path)  # no config.yaml: the defaults
    for name in ("PRODUCT_SERVICE_PORT", "ORDER_SERVICE_PORT", "SHOP_CONFIG", "DB_PORT"):
        monkeypatch.delenv(name, raising=False)
    return load_stack_settings(product_service_port=18080, order_service_port=18081)


def _all_ports(settings: StackSettings, base: Path) -> list[int]:
    ports = [cluster.MYSQL_FRONT, cluster.AMQP_FRONT, cluster.EPMD_PORT, cluster.STATS_PORT]
    for g in cluster.galera_nodes(base):
        assert g.galera is not None
        ports += [g.port, g.galera.gcomm_port, g.galera.ist_port, g.galera.sst_port]
    for k in cluster.kafka_nodes(base):
        ports += [k.broker_port, k.controller_port]
    for r in cluster.rabbitmq_nodes(base):
        ports += [r.amqp_port, r.management_port, r.dist_port]
    ports += [p.port for p in cluster.processes(settings, base)]
    return ports


def test_every_port_is_distinct_and_clear_of_the_single_node_stack(
    settings: StackSettings, tmp_path: Path
) -> None:
    ports = _all_ports(settings, tmp_path)
    assert len(ports) == len(set(ports))
    assert all(port > 13300 for port in ports)
    single = {settings.db.port, settings.rabbitmq.port, settings.stack.management_port, 9092}
    assert not single & set(ports)


def test_galera_nodes_know_every_member_and_take_state_by_mariabackup(tmp_path: Path) -> None:
    nodes = cluster.galera_nodes(tmp_path, "secret")
    members = {f"127.0.0.1:{13320 + n}" for n in (1, 2, 3)}
    for node in nodes:
        assert node.galera is not None
        options = mariadb._galera_options(node, node.galera)
        address = next(o for o in options if o.startswith("wsrep-cluster-address="))
        assert set(address.removeprefix("wsrep-cluster-address=gcomm://").split(",")) == members
        assert f"wsrep-provider={mariadb.GALERA_PROVIDER}" in options
        assert "wsrep-sst-method=mariabackup" in options
        assert f"wsrep-node-address=127.0.0.1:{node.galera.gcomm_port}" in options
    assert len({node.directory for node in nodes}) == 3


def test_kafka_nodes_are_three_voters_with_three_copies_of_every_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_STACK_DIR", str(tmp_path / "stack"))  # its certificate, passwords
    nodes = cluster.kafka_nodes(tmp_path)
    assert [node.node_id for node in nodes] == [1, 2, 3]
    properties = kafka._server_properties(nodes[1], kafka.Secrets.of_stack())
    assert "node.id=2\n" in properties
    assert f"controller.quorum.voters={nodes[0].voters}\n" in properties
    assert nodes[0].voters.count("@127.0.0.1:") == 3
    for line in (
        "default.replication.factor=3",
        "min.insync.replicas=2",
        "unclean.leader.election.enable=false",
        "offsets.topic.replication.factor=3",
        "transaction.state.log.min.isr=2",
        "broker.session.timeout.ms=3000",
    ):
        assert line + "\n" in properties
    assert len({node.cluster_id_file for node in nodes}) == 1


def test_rabbitmq_nodes_share_a_cookie_and_epmd_but_nothing_else(tmp_path: Path) -> None:
    nodes = cluster.rabbitmq_nodes(tmp_path)
    assert [n.nodename for n in nodes] == [f"shop-cluster-{n}@localhost" for n in (1, 2, 3)]
    assert len({n.home for n in nodes}) == 1
    assert {n.epmd_port for n in nodes} == {cluster.EPMD_PORT}
    assert len({n.directory for n in nodes}) == 3


def test_haproxy_writes_through_one_synced_galera_node_and_fronts_the_services(
    settings: StackSettings, tmp_path: Path
) -> None:
    config = haproxy.config(
        cluster.fronts(settings, tmp_path), check_script=tmp_path / "check.sh"
    ).splitlines()
    mysql = config[config.index("listen mysql") : config.index("listen amqp")]
    servers = [line.split() for line in mysql if line.strip().startswith("server ")]
    assert [s[1] for s in servers] == ["galera-1", "galera-2", "galera-3"]
    assert "backup" not in servers[0]
    assert all("backup" in s for s in servers[1:])
    assert all("on-marked-down" in s and "check" in s for s in servers)
    assert "    option external-check" in mysql
    assert f"    bind 127.0.0.1:{cluster.MYSQL_FRONT}" in mysql
    for service, port, first in (("products", 18080, 13411), ("orders", 18081, 13421)):
        section = config[config.index(f"listen {service}") :]
        assert section[1] == f"    bind 127.0.0.1:{port}"
        assert f"    server {service}-1 127.0.0.1:{first} check" in section
        assert f"    server {service}-2 127.0.0.1:{first + 1} check" in section
        assert "    option httpchk GET /healthz" in section
    script = haproxy.galera_check_script("/usr/bin/mariadb")
    assert "wsrep_local_state" in script
    assert '[ "$state" = "4" ]' in script


def test_replicas_and_consumers_run_with_the_cluster_settings(
    settings: StackSettings, tmp_path: Path
) -> None:
    procs = {p.name: p for p in cluster.processes(settings, tmp_path)}
    assert sorted(procs) == [
        "consumer-kafka-1",
        "consumer-kafka-2",
        "consumer-rabbitmq-1",
        "consumer-rabbitmq-2",
        "orders-1",
        "orders-2",
        "products-1",
        "products-2",
    ]
    for process in procs.values():
        env = process.env
        assert env["KAFKA_REPLICATION_FACTOR"] == "3"
        assert env["RABBITMQ_QUEUE_TYPE"] == "quorum"
        assert env["DB_PORT"] == str(cluster.MYSQL_FRONT)
        assert env["RABBITMQ_PORT"] == str(cluster.AMQP_FRONT)
        assert len(env["KAFKA_BROKERS"].split(",")) == 3
        assert env["AUTH_PUBLIC_KEY_FILE"] == str(tmp_path / "auth" / "public.pem")
        assert "DB_MIGRATE_PASSWORD" not in env  # services never get the migration account
    assert procs["products-2"].env["PRODUCT_SERVICE_PORT"] == "13412"
    assert procs["orders-1"].env["ORDER_SERVICE_PORT"] == "13421"
    assert procs["orders-1"].env["CONSUMERS_ENABLED"] == "false"
    # The order outbox is relayed by the consumer processes, not the order replicas.
    assert procs["orders-1"].env["OUTBOX_RELAY_ENABLED"] == "false"
    assert procs["consumer-kafka-1"].env["OUTBOX_RELAY_ENABLED"] == "True"
    assert procs["consumer-rabbitmq-2"].argv[-4:] == (
        "consume",
        "rabbitmq",
        "--health-port",
        "13434",
    )


def test_every_process_environment_loads_back_into_its_settings(
    settings: StackSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What devstack writes into a service's environment is what the service reads: every
    leaf, tuples included (comma-separated), survives the round trip."""
    for process in cluster.processes(settings, tmp_path):
        for name, value in process.env.items():
            monkeypatch.setenv(name, value)
        loaded = load_settings()
        assert loaded.db.retry_delays_seconds == settings.db.retry_delays_seconds
        assert loaded.db.port == cluster.MYSQL_FRONT
        for name in process.env:
            monkeypatch.delenv(name)


def test_the_fronts_follow_the_service_port_settings(
    settings: StackSettings, tmp_path: Path
) -> None:
    fronts = cluster.fronts(settings, tmp_path)
    assert [(service, port) for service, port, _ in fronts.http] == [
        ("products", 18080),
        ("orders", 18081),
    ]


def test_kafka_nodes_formatting_at_once_share_one_cluster_id(tmp_path: Path) -> None:
    id_file = tmp_path / "kafka.cluster.id"
    start = threading.Barrier(16)

    def first_id() -> str:
        start.wait()
        return kafka.shared_cluster_id(id_file)

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda _: first_id(), range(16)))
    assert len(set(ids)) == 1
    assert ids[0] == id_file.read_text().strip()
    assert [p.name for p in tmp_path.iterdir()] == ["kafka.cluster.id"]  # no drafts left


def test_the_clusters_rabbitmq_takes_tls_only_and_an_account_per_role(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As the single node: TLS-only listeners with the stack's certificate (whose names cover
    127.0.0.1, where clients reach HAProxy's front, which passes TLS through), and the order
    service's intake and consumer accounts; the product service gets none."""
    monkeypatch.chdir(tmp_path)  # no config.yaml: the defaults
    monkeypatch.setenv("SHOP_STACK_DIR", str(tmp_path / "stack"))
    for name in ("SHOP_CONFIG", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    identities.ensure()
    stack = load_stack_settings(product_service_port=18080, order_service_port=18081)
    tls = identities.tls()
    for node in cluster.rabbitmq_nodes(tmp_path):
        assert node.tls == tls
        config = rabbitmq.listener_config(node)
        assert "listeners.tcp = none\n" in config
        assert f"listeners.ssl.default = 127.0.0.1:{node.amqp_port}\n" in config
        assert "RABBITMQ_NODE_PORT" not in rabbitmq.node_env(node)
    certificate = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    shop = cluster.cluster_settings(stack, tmp_path)
    assert shop.rabbitmq.url.startswith(f"amqps://{identities.RABBITMQ_INTAKE}:")
    assert shop.rabbitmq.consumer_user == identities.RABBITMQ_CONSUMER
    assert shop.rabbitmq.port == cluster.AMQP_FRONT
    for process in cluster.processes(stack, tmp_path):
        if process.name.startswith("products-"):  # no RabbitMQ account at all
            assert not [name for name in process.env if name.startswith("RABBITMQ_USER")]
            continue
        env = process.env
        assert env["RABBITMQ_USER"] == identities.RABBITMQ_INTAKE, process.name
        assert env["RABBITMQ_CONSUMER_USER"] == identities.RABBITMQ_CONSUMER, process.name
        assert env["RABBITMQ_CA_FILE"] == str(tls.ca_file), process.name
        assert "RABBITMQ_ADMIN_PASSWORD" not in env


def test_cluster_env_exports_the_cluster_settings_as_their_variables(
    settings: StackSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`devstack cluster env` (what `bench.layouts` and docs/cluster.md eval): every export is
    a setting's variable with the cluster's value."""
    from devstack import cluster as cluster_cli

    monkeypatch.setenv("SHOP_STACK_DIR", str(tmp_path))
    lines = cluster_cli.env_lines(settings)
    exported = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert exported["DB_PORT"] == str(cluster.MYSQL_FRONT)
    assert exported["RABBITMQ_PORT"] == str(cluster.AMQP_FRONT)
    assert exported["KAFKA_BROKERS"].count(",") == 2
    assert exported["RABBITMQ_QUEUE_TYPE"] == "quorum"
    assert exported["PRODUCT_SERVICE_PORT"] == "18080"
    evaluated = load_stack_settings(**{name.lower(): v for name, v in exported.items()})
    assert evaluated.db.port == cluster.MYSQL_FRONT
