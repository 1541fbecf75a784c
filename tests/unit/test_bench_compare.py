"""bench.compare's table: per step, the medians of the per-round head/base ratios of
throughput and of p99, from the runs as compare.json records them."""

from __future__ import annotations

from typing import Any

from bench import compare

# What a run's header holds, for the tables' text.
HEADER = {
    "base": "17e278c505f0",
    "head": "abc",
    "rounds": 3,
    "seconds": 10.0,
    "customers": 2000,
    "order_rate": 10.0,
    "order_burst": 20,
}


def _result(rps: float, p99_ms: float) -> dict[str, Any]:
    requests = int(rps * 10)
    return {"seconds": 10.0, "requests": requests, "statuses": {"201": requests}, "p99_ms": p99_ms}


def test_the_table_gives_the_median_per_round_ratio_of_throughput_and_of_p99() -> None:
    rounds = [(1000, 100.0, 2000, 50.0), (1000, 100.0, 3000, 25.0), (2000, 40.0, 2000, 40.0)]
    runs = [
        {"round": n, "path": "sync", "connections": 50, "side": side, "result": _result(rps, p99)}
        for n, (base_rps, base_p99, head_rps, head_p99) in enumerate(rounds, start=1)
        for side, rps, p99 in (("base", base_rps, base_p99), ("head", head_rps, head_p99))
    ]
    plan = compare.Plan(False, 3, 10.0, ["sync"], [50])
    [row] = compare.summarise(runs, plan)
    assert row["ratio"] == 2.0  # of 2.0, 3.0 and 1.0
    assert row["p99_ratio"] == 0.5  # of 0.5, 0.25 and 1.0
    assert "| POST /orders/sync | 50 | 1,000 | 2,000 | 2.00x | 100.0 | 40.0 | 0.50 | 0 / 0 |" in (
        compare.markdown([row], HEADER)
    )


def test_an_asynchronous_step_also_counts_the_seconds_each_side_took_to_store_after_the_run() -> (
    None
):
    # base: 2,000/s for 10 s, then 10 s to store the backlog: 1,000/s accepted and stored;
    # head: 1,500/s, stored 2 s after: 1,250/s. Round 2 drained instantly on both sides.
    rounds = [(2000, 10.0, 1500, 2.0), (1000, 0.0, 1000, 0.0), (1000, 0.0, 900, None)]
    runs = [
        {
            "round": n,
            "path": "kafka",
            "connections": 200,
            "side": side,
            "drained_s": drained,
            "result": _result(rps, 50.0),
        }
        for n, (base_rps, base_drain, head_rps, head_drain) in enumerate(rounds, start=1)
        for side, rps, drained in (("base", base_rps, base_drain), ("head", head_rps, head_drain))
    ]
    plan = compare.Plan(False, 3, 10.0, ["kafka"], [200])
    [row] = compare.summarise(runs, plan)
    assert row["ratio"] == 0.9  # of 0.75, 1.0 and 0.9: the answers alone
    assert row["base_stored_rps_rounds"] == [1000.0, 1000.0, 1000.0]
    assert row["head_stored_rps_rounds"] == [1250.0, 1000.0, None]  # round 3 timed out
    assert row["stored_ratio"] == 1.125  # of 1.25 and 1.0
    assert row["base_drained_s"] == 0.0
    assert row["head_drained_s"] == 1.0
    table = compare.markdown([row], HEADER)
    assert "| POST /orders/async/kafka | 200 | 1,000 | 1,125 | 1.12x | 0.0 | 1.0 |" in table


def test_a_synchronous_step_has_no_stored_rates() -> None:
    runs = [
        {"round": 1, "path": "sync", "connections": 50, "side": side, "result": _result(1000, 9.0)}
        for side in ("base", "head")
    ]
    [row] = compare.summarise(runs, compare.Plan(False, 1, 10.0, ["sync"], [50]))
    assert "stored_ratio" not in row
