"""The settings that select a replicated layout: Kafka's replication factor, quorum queues."""

from __future__ import annotations

from pathlib import Path

import pytest

from shop.messaging.kafka import producer_config, topic_config
from shop.messaging.rabbitmq import Topology
from shop.settings import ConfigError, Kafka, RabbitMQ, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "SHOP_CONFIG",
        "KAFKA_REPLICATION_FACTOR",
        "RABBITMQ_QUEUE_TYPE",
        "RABBITMQ_DELIVERY_LIMIT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_the_single_node_layout_is_the_default() -> None:
    settings = load_settings()
    assert settings.kafka.replication_factor == 1
    assert settings.rabbitmq.queue_type == "classic"
    assert settings.rabbitmq.delivery_limit == 20


def test_the_environment_selects_the_cluster_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("RABBITMQ_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("RABBITMQ_DELIVERY_LIMIT", "5")
    settings = load_settings()
    assert settings.kafka.replication_factor == 3
    assert settings.rabbitmq.queue_type == "quorum"
    assert settings.rabbitmq.delivery_limit == 5


def test_an_unknown_queue_type_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_QUEUE_TYPE", "stream")
    with pytest.raises(ConfigError, match="RABBITMQ_QUEUE_TYPE"):
        load_settings()


@pytest.mark.parametrize(("factor", "min_insync"), [(1, "1"), (2, "1"), (3, "2"), (5, "4")])
def test_topics_need_all_but_one_replica_in_sync(factor: int, min_insync: str) -> None:
    config = topic_config(factor)
    assert config["min.insync.replicas"] == min_insync
    assert config["unclean.leader.election.enable"] == "false"


def test_producers_wait_for_every_in_sync_replica_and_are_idempotent() -> None:
    config = producer_config(Kafka(), delivery_timeout=2.0)
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True


def test_quorum_queues_carry_their_type_and_delivery_limit_on_both_queues() -> None:
    topology = Topology(RabbitMQ(queue_type="quorum", delivery_limit=7))
    for arguments in (topology.arguments, topology.dlq_arguments):
        assert arguments["x-queue-type"] == "quorum"
        assert arguments["x-delivery-limit"] == 7
    assert topology.arguments["x-dead-letter-exchange"] == "orders.dlx"


def test_classic_queues_keep_their_arguments_unchanged() -> None:
    topology = Topology(RabbitMQ())
    assert topology.arguments == {
        "x-dead-letter-exchange": "orders.dlx",
        "x-dead-letter-routing-key": "orders.dlq",
    }
    assert topology.dlq_arguments == {}
