"""bench.soak's decisions without a stack: when a fault counts as recovered from, which part of
the cluster each fault strikes, and the thread that runs a loop for a `with` block."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from bench import soak
from bench.background import Background

from devstack import cluster
from devstack.settings import StackSettings


def _second(t: float, ok: int, failed: int = 0) -> dict[str, Any]:
    return {"t": t, "window_ok": ok, "window_failed": failed}


def test_a_fault_is_recovered_from_at_the_first_clean_second_at_half_the_usual_rate() -> None:
    before = [_second(float(t), 800) for t in range(0, 10)]  # usual: 800 a second
    during = [_second(10.0, 0, 40), _second(11.0, 0, 60), _second(12.0, 300, 5)]
    after = [_second(13.0, 350), _second(14.0, 420), _second(15.0, 800)]
    fault = {"at": 10.0, "back": 12.0}
    soak.recoveries(before + during + after, [fault])
    assert fault["recovered_after_s"] == 4.0  # 14 s: no failure, 420 >= 400
    assert fault["failed_attempts"] == 105


def test_a_fault_never_recovered_from_is_none() -> None:
    progress = [_second(float(t), 800) for t in range(0, 10)] + [_second(10.0, 0, 9)]
    fault = {"at": 10.0, "back": 10.0}
    soak.recoveries(progress, [fault])
    assert fault["recovered_after_s"] is None


PARTS = {
    "galera-1": 1,
    "galera-2": 2,
    "kafka-1": 3,
    "rabbitmq-1": 4,
    "haproxy": 5,
    "products-1": 6,
    "products-2": 7,
    "orders-1": 8,
    "orders-2": 9,
    "consumer-kafka-1": 10,
    "consumer-kafka-2": 11,
    "consumer-rabbitmq-1": 12,
    "consumer-rabbitmq-2": None,  # not running: still its turn
}


@pytest.fixture
def on_cluster(monkeypatch: pytest.MonkeyPatch) -> soak.Cluster:
    monkeypatch.setattr(cluster, "part_pids", lambda _settings: PARTS)
    monkeypatch.setattr(cluster, "leader_of_partition", lambda *_args: "kafka-1")
    monkeypatch.setattr(cluster, "quorum_queue_leader", lambda *_args: "rabbitmq-1")
    monkeypatch.setattr(cluster, "galera_writer", lambda: "galera-2")
    return soak.Cluster(StackSettings())


def test_on_the_cluster_replicas_take_turns_and_nodes_are_found_by_their_role(
    on_cluster: soak.Cluster,
) -> None:
    assert not on_cluster.was_running  # one part down: `serve` starts the cluster
    assert [on_cluster.pick("orders") for _ in range(3)] == ["orders-1", "orders-2", "orders-1"]
    assert [on_cluster.pick("consumer") for _ in range(5)] == [
        "consumer-kafka-1",
        "consumer-kafka-2",
        "consumer-rabbitmq-1",
        "consumer-rabbitmq-2",
        "consumer-kafka-1",
    ]
    assert on_cluster.pick("kafka") == "kafka-1"  # the order topic's partition 0 leader
    assert on_cluster.pick("rabbitmq") == "rabbitmq-1"  # the order queue's leader
    assert on_cluster.pick("mariadb") == "galera-2"  # the node HAProxy sends writes to
    assert {target for _name, _kind, target in on_cluster.faults} == {
        "orders",
        "products",
        "consumer",
        "kafka",
        "rabbitmq",
        "mariadb",
    }


def test_the_cluster_processes_are_counted_by_kind(
    on_cluster: soak.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(soak, "group_members", lambda leader: [leader, leader * 100])
    found = on_cluster.processes()
    assert found["mariadb"] == [1, 100, 2, 200]
    assert found["orders"] == [8, 800, 9, 900]
    assert found["consumer"] == [10, 1000, 11, 1100, 12, 1200]
    kinds = {"mariadb", "kafka", "rabbitmq", "haproxy", "products", "orders", "consumer"}
    assert set(found) == kinds


class Counting(Background):
    def __init__(self) -> None:
        super().__init__("counting")
        self.steps = 0
        self.started = threading.Event()

    def loop(self) -> None:
        while True:
            self.steps += 1
            self.started.set()
            if self.stopping.wait(0.01):
                return


def test_a_background_loop_runs_for_its_block_and_has_ended_when_the_block_has() -> None:
    with Counting() as counting:
        assert counting.started.wait(5)
    steps = counting.steps
    assert steps >= 1
    assert not counting._thread.is_alive()
    assert counting.steps == steps
