"""bench.compare's table: per step, the medians of the per-round head/base ratios of
throughput and of p99, from the runs as compare.json records them."""

from __future__ import annotations

from typing import Any

from bench import compare


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
    header = {
        "base": "17e278c505f0",
        "head": "abc",
        "rounds": 3,
        "seconds": 10.0,
        "customers": 2000,
        "order_rate": 10.0,
        "order_burst": 20,
    }
    assert "| POST /orders/sync | 50 | 1,000 | 2,000 | 2.00x | 100.0 | 40.0 | 0.50 | 0 / 0 |" in (
        compare.markdown([row], header)
    )
