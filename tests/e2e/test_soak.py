"""`make soak`'s short version: 20,000 orders while parts of the stack are SIGKILLed and paused
in turn, then its audit (bench.soak): nothing lost, duplicated or oversold, every order's and
every stock change's event on Kafka, the backlog drained, and every fault recovered from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.disruptive]

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_loses_duplicates_and_oversells_nothing_under_faults() -> None:
    results = ROOT / "bench" / "results"
    before = set(results.glob("*-soak")) if results.exists() else set()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--orders=20000",
            "--customers=1000",
            "--fault-every=2",
            "--down-seconds=1",
            "--pause-seconds=3",
            "--sample-seconds=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    (run,) = set(results.glob("*-soak")) - before
    result = json.loads((run / "soak.json").read_text())
    found = result["audit"]
    assert found["accepted"] > 0
    assert found["stored"] >= found["accepted"]
    for name in ("lost", "duplicated", "oversold", "stock_mismatch", "orders_without_event"):
        assert found[name] == 0, (name, found)
    assert not found["products_with_version_gaps"], found["products_with_version_gaps"]
    assert found["outcomes"].get("no_stock", 0) > 0  # the scarce product ran out
    struck = [f for f in result["faults"] if "error" not in f]
    assert len(struck) >= 3, result["faults"]
    assert result["drain_seconds"] is not None
    assert (run / "report.html").stat().st_size > 10_000
    failed = [v for v in result["verdicts"] if not v["held"]]
    assert not failed, failed
    assert done.returncode == 0, done.stderr[-3000:]
