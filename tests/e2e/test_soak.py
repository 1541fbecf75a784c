"""`make soak`'s short version: 20,000 orders while parts of the stack are SIGKILLed and paused
in turn, then its audit (bench.soak): nothing lost, duplicated or oversold, every order's and
every stock change's event on Kafka, the backlog drained, and every fault recovered from."""

from __future__ import annotations

import pytest

from tests.support import assert_soak_audit_clean, short_soak

pytestmark = [pytest.mark.e2e, pytest.mark.disruptive]


def test_a_short_soak_loses_duplicates_and_oversells_nothing_under_faults() -> None:
    result, failure = short_soak(
        "--orders=20000",
        "--customers=1000",
        "--fault-every=2",
        "--down-seconds=1",
        "--pause-seconds=3",
        "--sample-seconds=2",
    )
    assert_soak_audit_clean(result)
    assert result["audit"]["outcomes"].get("no_stock", 0) > 0  # the scarce product ran out
    assert result["report_bytes"] > 10_000
    assert not failure, failure
