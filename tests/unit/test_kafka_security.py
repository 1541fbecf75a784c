"""Who a Kafka client is and what each principal may do, without a broker: the settings that
make `client_config`, the errors it reports, the ACLs `devstack.kafka.provision` makes, and the
broker configuration of `make up`'s node and the cluster's."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from bench import baseline_access
from confluent_kafka import KafkaError
from confluent_kafka.admin import (
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from devstack import identities, layout
from devstack import kafka as stack_kafka
from devstack.settings import StackSettings
from shop.messaging.kafka import (
    ErrorReport,
    acls,
    client_config,
    consumer_config,
    producer_config,
)
from shop.settings import ConfigError, Kafka, load_settings

SECRET = "s3cret-Pa55word"
ACCOUNT = Kafka(
    brokers="127.0.0.1:9092",
    security_protocol="SASL_SSL",
    user="orders",
    password=SECRET,
    ca_file="/stack/ca.pem",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "SHOP_CONFIG",
        "KAFKA_BROKERS",
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_USER",
        "KAFKA_PASSWORD",
        "KAFKA_PASSWORD_FILE",
        "KAFKA_CA_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


# --- client_config ------------------------------------------------------------------------------


def test_plaintext_is_the_default_and_carries_no_account() -> None:
    config = client_config(load_settings().kafka)
    assert config["bootstrap.servers"] == "127.0.0.1:9092"
    assert config["security.protocol"] == "plaintext"
    assert not {"sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location"} & set(config)


def test_sasl_ssl_logs_in_with_scram_and_trusts_the_configured_ca() -> None:
    config = client_config(ACCOUNT)
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("orders", SECRET)
    assert config["ssl.ca.location"] == "/stack/ca.pem"
    # The broker's host name is checked against its certificate: librdkafka's default, kept.
    assert "ssl.endpoint.identification.algorithm" not in config
    assert "enable.ssl.certificate.verification" not in config


def test_tls_without_a_ca_file_trusts_the_system_and_sends_no_account() -> None:
    config = client_config(Kafka(security_protocol="SSL", user="ignored", password="ignored"))
    assert config["security.protocol"] == "ssl"
    assert "ssl.ca.location" not in config
    assert "sasl.username" not in config


def test_every_producer_and_consumer_reaches_the_brokers_as_client_config_says() -> None:
    wanted = {k: v for k, v in client_config(ACCOUNT).items() if k != "error_cb"}
    for config in (
        producer_config(ACCOUNT, delivery_timeout=2.0),
        consumer_config(ACCOUNT, group="order-service"),
    ):
        assert {k: config[k] for k in wanted} == wanted
        assert isinstance(config["error_cb"], ErrorReport)


def test_the_environment_names_the_account_and_a_file_may_hold_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "kafka-password").write_text(SECRET + "\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_USER", "products")
    monkeypatch.setenv("KAFKA_PASSWORD_FILE", str(tmp_path / "kafka-password"))
    monkeypatch.setenv("KAFKA_CA_FILE", "/stack/ca.pem")
    kafka = load_settings().kafka
    assert (kafka.user, kafka.password, kafka.ca_file) == ("products", SECRET, "/stack/ca.pem")


@pytest.mark.parametrize("missing", ["KAFKA_USER", "KAFKA_PASSWORD"])
def test_sasl_without_an_account_is_refused_at_start_by_name(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    for name in {"KAFKA_USER", "KAFKA_PASSWORD"} - {missing}:
        monkeypatch.setenv(name, "x")
    with pytest.raises(ConfigError, match="needs KAFKA_USER and KAFKA_PASSWORD") as refused:
        load_settings()
    assert "Value error" not in str(refused.value)


def test_an_unknown_security_protocol_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
        load_settings()


def test_the_password_stays_out_of_the_settings_repr() -> None:
    assert SECRET not in repr(ACCOUNT)
    assert SECRET not in str(ACCOUNT)


# --- the error callback -------------------------------------------------------------------------


def test_a_refused_password_is_logged_naming_the_account_but_not_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    report = ErrorReport(ACCOUNT)
    reason = (
        "sasl_ssl://127.0.0.1:9092/bootstrap: SASL authentication error: Authentication failed "
        "during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
    )
    with caplog.at_level(logging.ERROR):
        report(KafkaError(KafkaError._AUTHENTICATION, reason))
    (line,) = caplog.messages
    assert "SASL authentication failed as 'orders' (SCRAM-SHA-512 over SASL_SSL)" in line
    assert "KAFKA_PASSWORD" in line
    assert SECRET not in line
    assert (
        report.refused == "Kafka refused the credentials as 'orders' (SCRAM-SHA-512 over SASL_SSL)"
    )


def test_a_failed_tls_handshake_points_at_the_ca_file(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        ErrorReport(ACCOUNT)(KafkaError(KafkaError._SSL, "certificate verify failed"))
    assert "KAFKA_CA_FILE" in caplog.text


# --- the ACLs -----------------------------------------------------------------------------------


def _grants(kafka: Kafka) -> set[tuple[str, object, str, object]]:
    bindings = acls(kafka)
    assert all(b.resource_pattern_type == ResourcePatternType.LITERAL for b in bindings)
    assert all(b.permission_type == AclPermissionType.ALLOW for b in bindings)
    assert all(b.host == "*" for b in bindings)
    return {(b.principal, b.restype, b.name, b.operation) for b in bindings}


def test_each_principal_may_use_only_its_own_topics_and_group() -> None:
    kafka = Kafka(
        topic="t-orders",
        order_events_topic="t-order-events",
        dlq_topic="t-orders.dlq",
        product_events_topic="t-product-events",
        consumer_group="t-order-service",
    )
    topic, group, read = ResourceType.TOPIC, ResourceType.GROUP, AclOperation.READ
    write = (AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.CREATE)
    wanted = {
        *(("User:orders", topic, "t-orders", op) for op in (*write, read)),
        *(("User:orders", topic, "t-order-events", op) for op in write),
        *(("User:orders", topic, "t-orders.dlq", op) for op in write),
        ("User:orders", group, "t-order-service", read),
        *(("User:products", topic, "t-product-events", op) for op in write),
    }
    assert _grants(kafka) == wanted


def test_nobody_gets_cluster_rights_all_or_wildcards() -> None:
    bindings = acls(Kafka())
    assert {b.restype for b in bindings} == {ResourceType.TOPIC, ResourceType.GROUP}
    assert AclOperation.ALL not in {b.operation for b in bindings}
    assert not any("*" in b.name for b in bindings)
    assert not any(b.principal in ("User:*", "User:ANONYMOUS") for b in bindings)


# --- the broker's configuration -----------------------------------------------------------------

SECRETS = stack_kafka.Secrets(
    ca_file=Path("/stack/ca.pem"),
    certificate="-----BEGIN CERTIFICATE-----\nMIIB\nAAAA\n-----END CERTIFICATE-----\n",
    key="-----BEGIN PRIVATE KEY-----\nMIGH\nBBBB\n-----END PRIVATE KEY-----\n",
    admin_password="admin-pw",
    controller_password="controller-pw",
)


def _properties(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def _make_ups_node(directory: Path) -> stack_kafka.KafkaNode:
    """A node as `make up` describes it, on the default ports."""
    return stack_kafka.KafkaNode(
        name="kafka",
        node_id=1,
        broker_port=9092,
        controller_port=9093,
        directory=directory,
        voters="1@127.0.0.1:9093",
        cluster_id_file=directory / "cluster.id",
    )


def test_make_ups_node_takes_scram_over_tls_only_and_lets_no_anonymous_user_in(
    tmp_path: Path,
) -> None:
    node = _make_ups_node(tmp_path)
    props = _properties(stack_kafka._server_properties(node, SECRETS))
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["listener.security.protocol.map"] == "CONTROLLER:SASL_SSL,SASL_SSL:SASL_SSL"
    assert "PLAINTEXT" not in props["listeners"] + props["advertised.listeners"]
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert props["super.users"] == "User:admin;User:controller"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    # PEM inline, one line each (a PEM key store file would need an encrypted key).
    assert props["ssl.keystore.key"].startswith("-----BEGIN PRIVATE KEY-----\\nMIGH\\n")
    assert props["ssl.keystore.certificate.chain"].endswith("\\n-----END CERTIFICATE-----")
    assert props["ssl.truststore.location"] == "/stack/ca.pem"


def test_a_bench_baseline_gets_a_loopback_plain_listener_only_while_asked(tmp_path: Path) -> None:
    node = _make_ups_node(tmp_path)
    opened = dataclasses.replace(node, plain_port=9094)
    props = _properties(stack_kafka._server_properties(opened, SECRETS))
    assert props["listeners"].endswith(",BASELINE://127.0.0.1:9094")
    assert props["advertised.listeners"].endswith(",BASELINE://127.0.0.1:9094")
    assert props["listener.security.protocol.map"].endswith(",BASELINE:PLAINTEXT")
    # Brokers and controllers still talk over SASL and TLS; ANONYMOUS is no super user and
    # holds nothing but what ACLs grant it.
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert props["super.users"] == "User:admin;User:controller"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    # `make up` writes the node without it, so a node still open is restarted (`start_node`).
    assert "BASELINE" not in stack_kafka._server_properties(node, SECRETS)


def test_a_baseline_may_use_only_its_own_sides_names() -> None:
    acls = baseline_access.anonymous_acls("bench-cmp-base-")
    assert {(a.restype, a.name, a.resource_pattern_type, a.principal) for a in acls} == {
        (ResourceType.TOPIC, "bench-cmp-base-", ResourcePatternType.PREFIXED, "User:ANONYMOUS"),
        (ResourceType.GROUP, "bench-cmp-base-", ResourcePatternType.PREFIXED, "User:ANONYMOUS"),
    }
    for prefix in ("", "orders", "bench"):
        with pytest.raises(ValueError, match="bench side"):
            baseline_access.anonymous_acls(prefix)


def test_a_checkout_from_before_the_accounts_is_told_apart(tmp_path: Path) -> None:
    (tmp_path / "old" / "src" / "shop").mkdir(parents=True)
    (tmp_path / "old" / "src" / "shop" / "settings.py").write_text("KAFKA_BROKERS = 1\n")
    (tmp_path / "new" / "src" / "shop").mkdir(parents=True)
    (tmp_path / "new" / "src" / "shop" / "settings.py").write_text("KAFKA_SECURITY_PROTOCOL\n")
    assert baseline_access.needs_baseline_access(tmp_path / "old")
    assert not baseline_access.needs_baseline_access(tmp_path / "new")
    assert not baseline_access.needs_baseline_access(Path(__file__).parents[2])


def test_the_clusters_nodes_take_scram_over_tls_between_themselves_too(tmp_path: Path) -> None:
    nodes = layout.kafka_nodes(tmp_path)
    for node in nodes:
        assert node.plain_port is None
        props = _properties(stack_kafka._server_properties(node, SECRETS))
        broker, controller = f"127.0.0.1:{node.broker_port}", f"127.0.0.1:{node.controller_port}"
        assert props["listeners"] == f"SASL_SSL://{broker},CONTROLLER://{controller}"
        assert props["listener.security.protocol.map"] == "CONTROLLER:SASL_SSL,SASL_SSL:SASL_SSL"
        assert props["inter.broker.listener.name"] == "SASL_SSL"
        assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
        assert props["sasl.mechanism.controller.protocol"] == "PLAIN"
        assert props["super.users"] == "User:admin;User:controller"
        assert props["allow.everyone.if.no.acl.found"] == "false"
        # the other controllers are reached over TLS at the names the certificate has
        assert props["controller.quorum.voters"] == nodes[0].voters


def test_the_clusters_services_reach_kafka_with_their_own_accounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_STACK_DIR", str(tmp_path / "stack"))  # its generated identities
    mine = StackSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_user="orders",
        kafka_password=SECRET,
        kafka_ca_file="/stack/ca.pem",
    )
    kafka = layout.cluster_settings(mine, tmp_path).kafka
    assert (kafka.security_protocol, kafka.user, kafka.password, kafka.ca_file) == (
        "SASL_SSL",
        "orders",
        SECRET,
        "/stack/ca.pem",
    )
    for process in layout.processes(mine, tmp_path):
        principal = "products" if process.name.startswith("products-") else "orders"
        assert process.env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert process.env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert process.env["KAFKA_USER"] == principal, process.name
        assert process.env["KAFKA_PASSWORD"] == identities.password(f"kafka:{principal}")
        assert process.env["KAFKA_CA_FILE"] == str(tmp_path / "stack" / "identities" / "ca.pem")
        assert SECRET not in process.env.values()  # the caller's account is not theirs
        assert "KAFKA_ADMIN_PASSWORD" not in process.env
        assert process.env["DB_USER"] == f"shop_{principal}"


def test_tools_see_the_stacks_topics_as_the_administrator_and_plaintext_as_it_is() -> None:
    mine = StackSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_user="orders",
        kafka_password=SECRET,
        kafka_admin_password="admin-pw",
    )
    admin = stack_kafka.as_admin(mine)
    assert (admin.user, admin.password, admin.security_protocol) == (
        "admin",
        "admin-pw",
        "SASL_SSL",
    )
    plain = StackSettings()
    assert stack_kafka.as_admin(plain) == plain.kafka


def test_revoking_needs_a_prefix_so_it_never_takes_every_acl_away() -> None:
    with pytest.raises(ValueError, match="prefix"):
        stack_kafka.revoke(StackSettings(), "")
