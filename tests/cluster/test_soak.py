"""`make soak CLUSTER=1`'s short version: orders on the cluster while a node of each engine (the
Kafka partition leader, the queue leader, the Galera writer) and the replicas and consumer
processes are SIGKILLed or paused in turn, then its audit (bench.soak): nothing lost,
duplicated or oversold, every order's and stock change's event on Kafka, the backlog drained."""

from __future__ import annotations

import pytest

from devstack.settings import StackSettings
from tests.support import assert_soak_audit_clean, short_soak

pytestmark = [pytest.mark.cluster]


def test_a_short_soak_on_the_cluster_loses_duplicates_and_oversells_nothing(
    clustered: StackSettings,
) -> None:
    fronts = {  # the cluster's HTTP fronts, where `clustered` put them
        "PRODUCT_SERVICE_PORT": str(clustered.http.product_port),
        "ORDER_SERVICE_PORT": str(clustered.http.order_port),
    }
    result, failure = short_soak(
        "--cluster",
        "--orders=15000",
        "--customers=1000",
        "--fault-every=2",
        "--down-seconds=2",
        "--pause-seconds=3",
        "--sample-seconds=2",
        env=fronts,
    )
    assert result["plan"]["cluster"]
    assert_soak_audit_clean(result)
    assert not failure, failure
