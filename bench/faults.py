"""The fault drill: a mixed order load on the cluster while its parts are SIGKILLed in turn.

During a load of sync, Kafka and RabbitMQ orders from clients that retry with the same
Idempotency-Key (`bench.mixed`), kill with SIGKILL, one after the other: the Kafka node leading
the order topic's partition 0, the RabbitMQ node leading the order quorum queue, the Galera node
HAProxy sends writes to, and one replica of each service (products, orders and one consumer per
broker); hold each down 12 s (the clients must be served again before it returns), bring it
back, let the load settle. Then audit: every accepted order stored exactly once, no unit
oversold.

Run by the fault test (`tests/cluster/test_faults.py`, which starts and stops the cluster), or
by hand against `make cluster`:
    .venv/bin/python -m bench.faults
Writes bench/results/faults-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.mixed import audit, start
from devstack import cluster, layout
from devstack.settings import StackSettings, load_stack_settings

ROOT = Path(__file__).resolve().parents[1]
REPLICAS = ["products-1", "orders-1", "consumer-kafka-1", "consumer-rabbitmq-1"]


def say(message: str) -> None:
    print(f"faults: {message}", flush=True)


def plan(settings: StackSettings) -> list[tuple[str, Callable[[], list[str]]]]:
    """(fault, what to kill: found when the fault starts, as leaders move)."""
    shop = layout.cluster_settings(settings, layout.directory())

    def galera_writer() -> list[str]:
        writer = cluster.galera_writer()
        if writer is None:
            raise RuntimeError("HAProxy routes MariaDB to no node")
        return [writer]

    return [
        (
            "kafka partition leader",
            lambda: [cluster.leader_of_partition(settings, shop.kafka.topic, 0)],
        ),
        ("quorum queue leader", lambda: [cluster.quorum_queue_leader(settings)]),
        ("galera writer", galera_writer),
        ("one replica of each service", lambda: list(REPLICAS)),
    ]


async def drill(
    settings: StackSettings,
    *,
    clients: int = 8,
    scarce_stock: int = 600,
    hold: float = 12.0,
    settle: float = 8.0,
) -> dict[str, Any]:
    """Run the load, the faults in turn, then the audit; return every figure."""
    shop = layout.cluster_settings(settings, layout.directory())  # the fronts are settings'
    load, running = await start(shop, clients=clients, scarce_stock=scarce_stock)
    faults: list[dict[str, Any]] = []
    try:
        await asyncio.sleep(settle)  # a baseline before the first fault
        baseline_end = load.tally.now()
        for name, pick in plan(settings):
            parts = await asyncio.to_thread(pick)
            killed = load.tally.now()
            say(f"{name}: SIGKILL {', '.join(parts)}")
            for part in parts:
                await asyncio.to_thread(cluster.kill, settings, part)
            await asyncio.sleep(hold)
            revived = load.tally.now()
            for part in parts:
                await asyncio.to_thread(cluster.revive, settings, part)
            ready = load.tally.now()
            say(f"{name}: back and ready {ready - killed:.1f}s after the kill")
            await asyncio.sleep(settle)
            faults.append(
                {
                    "fault": name,
                    "killed": parts,
                    "at_s": round(killed, 2),
                    "down_s": round(revived - killed, 2),
                    "ready_after_s": round(ready - killed, 2),
                }
            )
    finally:
        load.stop()
        tally = await running
    ends = [f["at_s"] for f in faults[1:]] + [tally.now()]
    for fault, end in zip(faults, ends, strict=True):
        back = fault["at_s"] + fault["down_s"]
        fault["clients"] = tally.window(fault["at_s"], end)
        fault["while_down"] = tally.window(fault["at_s"], back)
        # a node coming back moves work too (HAProxy sends writes to galera-1 again, Kafka
        # leaders move back): what that cost, apart
        fault["on_return"] = tally.window(back, end)
        # from the kill until the clients' last failure while the part was still down: under
        # `hold`, the system failed over without it
        fault["recovered_after_s"] = fault["while_down"]["last_failure_after_s"]
    say("waiting until every accepted order is stored, then auditing")
    found = await asyncio.to_thread(audit, shop, load, scarce_stock=scarce_stock)
    return {
        "started": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "clients": clients,
        "hold_s": hold,
        "settle_s": settle,
        "baseline": tally.window(0.0, baseline_end),
        "faults": faults,
        "load": tally.summary(),
        "unexpected_answers": tally.other[:20],
        "audit": found,
    }


def write(result: dict[str, Any]) -> Path:
    out = ROOT / "bench" / "results" / f"faults-{result['started']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def describe(result: dict[str, Any]) -> list[str]:
    load, found = result["load"], result["audit"]
    lines = [
        f"orders accepted {load['orders_accepted']}, refused for stock {load['orders_no_stock']}, "
        f"abandoned {load['orders_abandoned']}; lost {found['lost']}, duplicated "
        f"{found['duplicated']}, oversold {found['oversold']}",
        f"attempts {load['attempts']}, answered 5xx or cut {load['attempts_failed']} "
        f"({100 * load['failed_share']:.2f} %)",
    ]
    if found["lost_orders"]:
        lines.append(f"lost: {found['lost_orders']}")
    for fault in result["faults"]:
        c = fault["clients"]
        lines.append(
            f"{fault['fault']} ({', '.join(fault['killed'])}): clients recovered "
            f"{fault['recovered_after_s']}s after the kill ({fault['while_down']['failed']} of "
            f"{fault['while_down']['attempts']} attempts failed while down); back and routed to "
            f"{fault['ready_after_s']}s after the kill, {fault['on_return']['failed']} attempts "
            f"failed on its return; {c['failed']} of {c['attempts']} in all"
            + (f" (by path and status: {c['failed_by']})" if c["failed_by"] else "")
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hold", type=float, default=12.0)
    args = parser.parse_args()
    began = time.monotonic()
    result = asyncio.run(drill(load_stack_settings(), clients=args.clients, hold=args.hold))
    say(f"report: {write(result)} ({time.monotonic() - began:.0f}s)")
    for line in describe(result):
        say(line)
    found = result["audit"]
    return 0 if not (found["lost"] or found["duplicated"] or found["oversold"]) else 1


if __name__ == "__main__":
    sys.exit(main())
