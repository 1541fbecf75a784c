"""`make soak`: many orders under fire on `make up`'s stack, then an audit of every one of them.

A mixed load (`bench/soakload`, Go: sync, Kafka and RabbitMQ orders in turn from `--customers`
customers with their own tokens, each order with its own Idempotency-Key and retried as the
README tells clients to, plus `GET /products`) places `--orders` orders. Meanwhile, every
`--fault-every` seconds, the next fault of `FAULTS` strikes: a part SIGKILLed and brought back
after `--down-seconds` the way an operator's supervisor would (the consumer process by the order
service itself), or a broker paused (SIGSTOP) for `--pause-seconds`. Every `--sample-seconds`
the sampler records each process's resident memory, file descriptors and sockets, the outbox,
key and alias tables' rows, the outbox backlog, Kafka consumer lag and the RabbitMQ queue's
depth. The services run with short purge horizons (`SOAK_SETTINGS`) so that the purges work
during the run, and get `make up`'s settings back at the end.

After the load: wait until every accepted order is stored and nothing waits (lag, depth,
backlog zero: the drain), then audit: lost, duplicated, oversold, stock mismatch; every stored
order's event on order-events and every stock change's product event with consecutive
versions, read back from Kafka; and the bounds (`BOUNDS`). Writes
bench/results/<time>-soak/{soak.json,report.html}; exits 1 if the audit or a bound fails.

    make soak                      # 1,000,000 orders, a fault every 20 s
    make soak ORDERS=20000 FAULT_EVERY=4
    .venv/bin/python -m bench.soak --orders 20000 --fault-every 4
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

import devstack
from bench.background import Background
from bench.customers import TOKEN_TTL_SECONDS
from bench.loadgen import ensure_go_tool
from bench.run import DepthReader, make_products, query
from devstack import cluster, layout, mariadb, rabbitmq, services
from devstack import kafka as stack_kafka
from devstack.common import Daemon, group_members
from devstack.settings import StackSettings, load_stack_settings
from shop.access.dev_issuer import dev_token
from shop.messaging.kafka import client_config

ROOT = Path(__file__).resolve().parents[1]
SOAKLOAD = ROOT / "bench" / "soakload"

# The services' settings during a soak: purges that act within the run (a key is remembered
# 10 minutes, longer than any order's retries; a sent event is kept 5).
SOAK_SETTINGS: dict[str, Any] = {
    "idempotency_key_ttl_seconds": 600.0,
    "outbox_retention_seconds": 300.0,
    "outbox_purge_every_seconds": 30.0,
}
BOUNDS = {
    "drain_seconds": 180.0,  # after the load: lag, queue depth and backlog back to 0 within
    "memory_growth": 1.5,  # a process kind's memory at the end / after warm-up, at most
    "warm_up_seconds": 60.0,  # memory "after warm-up" is the first sample after this
    "table_slack": 1.5,  # a purged table's peak rows / (peak rate x horizon), at most
}
SERVERS = ("mariadb", "kafka", "rabbitmq")


def say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- where the soak runs


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)
        time.sleep(0.1)


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _pause(pids: list[int], seconds: float) -> None:
    _signal(pids, signal.SIGSTOP)
    time.sleep(seconds)
    _signal(pids, signal.SIGCONT)


def _running_services(stack: StackSettings) -> list[str]:
    """`make up`'s services that run now."""
    return [n for n in devstack.SERVICES if services.daemon(n, stack).pid() is not None]


class Site:
    """Where a soak runs (`make up`'s stack, or the cluster): the services' settings there,
    its faults in turn as (what the report calls it, kind, target), its processes by kind
    (products, orders, consumer, and each server), how to strike a fault, how to serve with
    other settings and how to leave it as it was found."""

    name = ""
    faults: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, stack: StackSettings) -> None:
        self.stack = stack
        self.serving = stack

    @property
    def shop(self) -> StackSettings:
        return self.stack

    def processes(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def strike(self, kind: str, target: str, *, down: float, pause: float) -> str:
        """One fault, until what it struck is back; what was struck, for the record."""
        raise NotImplementedError

    def serve(self, settings: StackSettings) -> None:
        """(Re)start the services with `settings` (`stack` with the soak's horizons)."""
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError


class SingleNode(Site):
    """`make up`'s stack: a killed server or service is started again by `devstack start`, the
    consumer process by the order service itself."""

    name = "single node"
    faults = (
        ("kill order service", "kill", "orders"),
        ("kill Kafka", "kill", "kafka"),
        ("kill consumer process", "kill", "consumer"),
        ("kill MariaDB", "kill", "mariadb"),
        ("pause Kafka", "pause", "kafka"),
        ("kill product service", "kill", "products"),
        ("kill RabbitMQ", "kill", "rabbitmq"),
        ("pause RabbitMQ", "pause", "rabbitmq"),
    )

    def __init__(self, stack: StackSettings) -> None:
        super().__init__(stack)
        self.running = _running_services(stack)

    def _daemon(self, target: str) -> Daemon:
        if target in devstack.SERVICES:
            return services.daemon(target, self.stack)
        daemons = {
            "mariadb": mariadb.daemon,
            "kafka": stack_kafka.daemon,
            "rabbitmq": rabbitmq.daemon,
        }
        return daemons[target](self.stack)

    def processes(self) -> dict[str, list[int]]:
        """The live processes of each kind: products, orders (the HTTP server and its
        workers), consumer (the order service's consumer process), and the three servers."""
        found: dict[str, list[int]] = {}
        for target in (*devstack.SERVICES, *SERVERS):
            leader = self._daemon(target).pid()
            members = [] if leader is None else group_members(leader)
            if target == "orders":
                found["consumer"] = [p for p in members if " consume " in _cmdline(p)]
                members = [p for p in members if p not in found["consumer"]]
            found[target] = members
        return found

    def strike(self, kind: str, target: str, *, down: float, pause: float) -> str:
        deadline = time.monotonic() + 60  # (the consumer process may be between two lives)
        while not (running := self.processes()[target]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target}: nothing runs to strike")
            time.sleep(0.2)
        if kind == "pause":
            _pause(running, pause)
            return f"SIGSTOP {len(running)} process(es) for {pause:g} s"
        _signal(running, signal.SIGKILL)
        _wait_gone(running)
        time.sleep(down)
        if target == "consumer":  # the order service starts it again itself (after a pause)
            deadline = time.monotonic() + 60
            while not self.processes()["consumer"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the order service did not start its consumer again")
                time.sleep(0.2)
        else:
            devstack.start(target, self.serving)
        return f"SIGKILL {len(running)} process(es), down {down:g} s"

    def serve(self, settings: StackSettings) -> None:
        self.serving = settings
        for name in devstack.SERVICES:
            services.start(name, settings)

    def restore(self) -> None:
        """`make up`'s settings back, or the services stopped if they did not run."""
        for name in devstack.SERVICES:
            with contextlib.suppress(Exception):
                if name in self.running:
                    services.start(name, self.stack)
                else:
                    services.stop(name, self.stack)


class Cluster(Site):
    """`make cluster`: each fault strikes one node or process of the part the single node's
    fault strikes (the node leading the order topic's partition 0 or the order queue, the
    Galera node taking writes, a replica or consumer process in turn); `cluster.revive` brings
    it back into its cluster and HAProxy's rotation. Started here if it did not run, and then
    stopped at the end (`make up`'s services, which would hold its fronts, are stopped first
    and started again after)."""

    name = "cluster"
    faults = (
        ("kill an order replica", "kill", "orders"),
        ("kill the Kafka partition leader", "kill", "kafka"),
        ("kill a consumer process", "kill", "consumer"),
        ("kill the Galera writer", "kill", "mariadb"),
        ("pause the Kafka partition leader", "pause", "kafka"),
        ("kill a product replica", "kill", "products"),
        ("kill the queue leader", "kill", "rabbitmq"),
        ("pause the queue leader", "pause", "rabbitmq"),
    )

    def __init__(self, stack: StackSettings) -> None:
        super().__init__(stack)
        self.turns: collections.Counter[str] = collections.Counter()
        self.was_running = all(pid is not None for pid in cluster.part_pids(stack).values())
        self.displaced: list[str] = []  # `make up`'s services, stopped to free the fronts

    @property
    def shop(self) -> StackSettings:
        return layout.cluster_settings(self.stack, layout.directory())

    def processes(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = collections.defaultdict(list)
        for name, leader in cluster.part_pids(self.stack).items():
            kind = name.split("-")[0].replace("galera", "mariadb")  # products-1: products
            found[kind] += [] if leader is None else group_members(leader)
        return dict(found)

    def pick(self, target: str) -> str:
        """The part a fault on `target` strikes now (leaders move; replicas take turns)."""
        turn = self.turns[target]
        self.turns[target] += 1
        if target == "kafka":
            return cluster.leader_of_partition(self.stack, self.shop.kafka.topic, 0)
        if target == "rabbitmq":
            return cluster.quorum_queue_leader(self.stack)
        if target == "mariadb":
            writer = cluster.galera_writer()
            if writer is None:
                raise RuntimeError("HAProxy routes MariaDB to no node")
            return writer
        parts = sorted(p for p in cluster.part_pids(self.stack) if p.startswith(f"{target}-"))
        return parts[turn % len(parts)]

    def strike(self, kind: str, target: str, *, down: float, pause: float) -> str:
        part = self.pick(target)
        leader = cluster.part_pids(self.stack)[part]
        if leader is None:
            raise RuntimeError(f"{part}: does not run")
        members = group_members(leader)
        if kind == "pause":
            _pause(members, pause)
            return f"SIGSTOP {part} for {pause:g} s"
        cluster.kill(self.stack, part)
        _wait_gone(members)
        time.sleep(down)
        cluster.revive(self.serving, part)
        return f"SIGKILL {part}, down {down:g} s"

    def serve(self, settings: StackSettings) -> None:
        self.serving = settings
        if self.was_running:
            cluster.restart_processes(settings)
            return
        self.displaced = _running_services(self.stack)  # they would hold the cluster's fronts
        for name in self.displaced:
            services.stop(name, self.stack)
        cluster.up(settings)

    def restore(self) -> None:
        """The cluster's own settings back; or, if it did not run, the cluster stopped and
        `make up`'s services started again if they ran."""
        if self.was_running:
            cluster.restart_processes(self.stack)
            return
        cluster.down(self.stack)
        for name in self.displaced:
            devstack.start(name, self.stack)


# ---------------------------------------------------------------- sampling


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _fds(pid: int) -> tuple[int, int]:
    """(open file descriptors, of which sockets)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0, 0
    sockets = 0
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                sockets += 1
    return len(names), sockets


TABLES = ("order_outbox", "product_outbox", "order_keys", "order_aliases")


class Sampler(Background):
    """Samples the stack every `every` seconds in a thread (`samples`: one dict each)."""

    join_timeout = 30.0

    def __init__(self, site: Site, users: range, every: float, t0: float) -> None:
        super().__init__("soak-sampler")
        self.site, self.users, self.every, self.t0 = site, users, every, t0
        self.settings = site.shop.migration_account()  # reads both services' tables
        self.samples: list[dict[str, Any]] = []

    def loop(self) -> None:
        with DepthReader(self.settings) as depths:
            while True:
                self.samples.append(self.sample(depths))
                if self.stopping.wait(self.every):
                    return

    def sample(self, depths: DepthReader) -> dict[str, Any]:
        t = round(time.monotonic() - self.t0, 1)
        memory: dict[str, float] = {}
        fds: dict[str, int] = {}
        sockets: dict[str, int] = {}
        for kind, pids in self.site.processes().items():
            memory[kind] = round(sum(_rss_mb(p) for p in pids), 1)
            counted = [_fds(p) for p in pids]
            fds[kind] = sum(c[0] for c in counted)
            sockets[kind] = sum(c[1] for c in counted)
        sample: dict[str, Any] = {
            "t": t,
            "memory_mb": memory,
            "fds": fds,
            "sockets": sockets,
            "lag": depths.lag(),
            "depth": depths.queue_depth(),
        }
        try:
            rows = {name: _count(self.settings, f"SELECT COUNT(*) FROM {name}") for name in TABLES}
            rows["unsent"] = sum(
                _count(self.settings, f"SELECT COUNT(*) FROM {name} WHERE sent_at IS NULL")
                for name in ("order_outbox", "product_outbox")
            )
            rows["stored"] = _count(
                self.settings,
                "SELECT COUNT(*) FROM orders WHERE user_id >= %s AND user_id < %s",
                (self.users.start, self.users.stop),
            )
            sample["rows"] = rows
        except Exception as exc:  # MariaDB down: a gap in the plots, not a failed soak
            sample["rows"] = None
            sample["rows_error"] = type(exc).__name__
        return sample


def _count(settings: StackSettings, sql: str, args: Any = None) -> int:
    return int(query(settings, sql, args)[0][0])


def _drained(sample: dict[str, Any], accepted: int) -> bool:
    rows = sample.get("rows")
    return bool(
        rows
        and rows["stored"] >= accepted
        and not rows["unsent"]
        and sample["lag"] == 0
        and sample["depth"] == 0
    )


# ---------------------------------------------------------------- the load


@dataclasses.dataclass
class Plan:
    orders: int
    clients: int
    customers: int
    fault_every: float
    down: float
    pause: float
    sample_every: float
    cluster: bool = False


class Faults(Background):
    """Strikes the next fault every `every` seconds in a thread until stopped (a fault under way
    finishes first: its part is back before `stop` returns)."""

    def __init__(self, site: Site, plan: Plan, t0: float) -> None:
        super().__init__("soak-faults")
        self.site, self.plan, self.t0 = site, plan, t0
        self.done: list[dict[str, Any]] = []
        self.next_at = plan.fault_every
        self.next_name = site.faults[0][0]

    def loop(self) -> None:
        for number in range(1_000_000):
            name, kind, target = self.site.faults[number % len(self.site.faults)]
            self.next_name = name
            if self.stopping.wait(max(0.0, self.next_at - (time.monotonic() - self.t0))):
                return
            began = time.monotonic() - self.t0
            record: dict[str, Any] = {"number": number + 1, "fault": name, "at": round(began, 1)}
            try:
                record["did"] = self.site.strike(
                    kind, target, down=self.plan.down, pause=self.plan.pause
                )
            except Exception as exc:  # recorded: the soak goes on, the report shows it
                record["error"] = repr(exc)
            record["back"] = round(time.monotonic() - self.t0, 1)
            self.done.append(record)
            self.next_at = record["back"] + self.plan.fault_every


def customers_file(settings: StackSettings, count: int, directory: Path) -> range:
    """`count` customers of this soak alone (user ids above any other run's), a token each."""
    first = 3_000_000_000 + random.randrange(1_000_000_000)
    users = range(first, first + count)
    tokens = (
        dev_token(settings, subject=str(u), scopes=[], ttl_seconds=TOKEN_TTL_SECONDS) for u in users
    )
    lines = [f"{user}\t{token}" for user, token in zip(users, tokens, strict=True)]
    (directory / "customers.tsv").write_text("\n".join(lines) + "\n")
    return range(first, first + count)


def progress_line(
    line: dict[str, Any], plan: Plan, stored: int | None, faults: Faults | None
) -> str:
    share = line["done"] / plan.orders
    bar = "#" * int(share * 30)
    rate = line["window_ok"]  # (answers a second: progress comes every second)
    upcoming = ""
    if faults is not None:
        due = faults.next_at - line["t"]
        upcoming = f", next: {faults.next_name} in {max(0.0, due):.0f} s"
    return (
        f"[{bar:<30}] {share:6.1%} {line['done']:,}/{plan.orders:,} done, "
        f"{line['accepted']:,} accepted, {'?' if stored is None else f'{stored:,}'} stored, "
        f"{rate:,}/s, {len(faults.done) if faults else 0} faults{upcoming}"
    )


# ---------------------------------------------------------------- the audit


def _event_offsets(settings: StackSettings, topic: str) -> dict[int, int]:
    """Each partition's high watermark: where the events written from now on start."""
    admin = client_config(stack_kafka.as_admin(settings))
    consumer = Consumer({**admin, "group.id": "soak", "log_level": 0})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def read_events(settings: StackSettings, topic: str, since: dict[int, int]) -> Iterator[Any]:
    """Every event on `topic` from the offsets `since` to the partitions' ends now."""
    consumer = Consumer(
        {
            **client_config(stack_kafka.as_admin(settings)),
            "group.id": f"soak-audit-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        ends = _event_offsets(settings, topic)
        left = {p for p in ends if ends[p] > since.get(p, 0)}
        consumer.assign([TopicPartition(topic, p, since.get(p, 0)) for p in left])
        idle = time.monotonic()
        while left and time.monotonic() - idle < 30:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error():
                    continue
                idle = time.monotonic()
                value, offset, partition = message.value(), message.offset(), message.partition()
                if value is None or offset is None or partition is None:
                    continue
                yield orjson.loads(value)
                if offset + 1 >= ends[partition]:
                    left.discard(partition)
    finally:
        consumer.close()


def audit(
    settings: StackSettings,
    users: range,
    orders_file: Path,
    products: dict[int, int],
    offsets: dict[str, dict[int, int]],
) -> dict[str, Any]:
    """What the clients were told against what the stack holds (after the drain)."""
    accepted: dict[str, int] = {}  # order id -> user
    per_user_accepted: collections.Counter[int] = collections.Counter()
    abandoned: collections.Counter[int] = collections.Counter()
    outcomes: collections.Counter[str] = collections.Counter()
    for line in orders_file.read_text().splitlines():
        _, outcome, order_id, user, *_ = line.split("\t")
        outcomes[outcome] += 1
        if outcome == "accepted":
            accepted[order_id] = int(user)
            per_user_accepted[int(user)] += 1
        elif outcome == "abandoned":
            abandoned[int(user)] += 1
    rows = query(
        settings,
        "SELECT id, user_id, product_id, status, quantity, version FROM orders "
        "WHERE user_id >= %s AND user_id < %s",
        (users.start, users.stop),
    )
    stored = {str(uuid.UUID(bytes=r[0])): r for r in rows}
    aliases = {
        str(uuid.UUID(bytes=a)): str(uuid.UUID(bytes=o))
        for a, o in query(
            settings,
            "SELECT a.id, a.order_id FROM order_aliases a JOIN orders o ON o.id = a.order_id "
            "WHERE o.user_id >= %s AND o.user_id < %s",
            (users.start, users.stop),
        )
    }
    found = {i: i if i in stored else aliases.get(i) for i in accepted}
    lost = sorted(i for i, target in found.items() if target is None)
    claimed = {target for target in found.values() if target is not None}
    per_user_stored = collections.Counter(int(r[1]) for r in rows)
    duplicated = sum(
        max(0, n - per_user_accepted[user] - abandoned[user]) for user, n in per_user_stored.items()
    )
    confirmed: collections.Counter[int] = collections.Counter()
    for r in rows:
        if r[3] == "confirmed":
            confirmed[int(r[2])] += int(r[4])
    stock_rows = query(
        settings,
        f"SELECT id, stock, version FROM products WHERE id IN ({','.join(map(str, products))})",
    )
    stock = {int(r[0]): (int(r[1]), int(r[2])) for r in stock_rows}
    oversold = sum(max(0, confirmed[p] - initial) for p, initial in products.items())
    mismatch = sum(abs(initial - stock[p][0] - confirmed[p]) for p, initial in products.items())

    order_events: set[str] = set()
    for event in read_events(settings, settings.kafka.order_events_topic, offsets["order"]):
        order_events.add(str(event["data"]["id"]))
    no_event = sorted(i for i in stored if i not in order_events)
    versions: dict[int, set[int]] = collections.defaultdict(set)
    for event in read_events(settings, settings.kafka.product_events_topic, offsets["product"]):
        product = event["data"].get("id")
        if product in products:
            versions[int(product)].add(int(event["version"]))
    gaps = {}
    for product, (_, version) in stock.items():
        first = offsets["versions"][product] + 1
        expected = set(range(first, version + 1))
        if versions[product] != expected:
            gaps[product] = {
                "missing": sorted(expected - versions[product])[:20],
                "unexpected": sorted(versions[product] - expected)[:20],
            }
    return {
        "outcomes": dict(outcomes),
        "accepted": len(accepted),
        "stored": len(stored),
        "lost": len(lost),
        "lost_orders": lost[:50],
        "found_by_alias": sum(1 for i in accepted if i not in stored and i in aliases),
        "duplicated": duplicated,
        "unaccounted": len(set(stored) - claimed),
        "oversold": oversold,
        "stock_mismatch": mismatch,
        "orders_without_event": len(no_event),
        "orders_without_event_sample": no_event[:20],
        "order_events_read": len(order_events),
        "products_with_version_gaps": gaps,
        "product_versions": {p: sorted(v)[-1] if v else None for p, v in versions.items()},
    }


# ---------------------------------------------------------------- the verdicts


def recoveries(progress: list[dict[str, Any]], faults: list[dict[str, Any]]) -> None:
    """Each fault's recovery (in place): seconds from the fault until the first second after
    its part was back with no failed attempt and at least half the answers a second of the ten
    seconds before it."""
    for fault in faults:
        before = [p["window_ok"] for p in progress if fault["at"] - 10 <= p["t"] < fault["at"]]
        usual = statistics.median(before) if before else 0
        after = [p for p in progress if p["t"] >= fault["back"]]
        healthy = next(
            (p for p in after if not p["window_failed"] and p["window_ok"] >= usual / 2), None
        )
        recovered = None if healthy is None else round(healthy["t"] - fault["at"], 1)
        fault["recovered_after_s"] = recovered
        fault["failed_attempts"] = sum(
            p["window_failed"] for p in progress if fault["at"] <= p["t"] <= fault["back"] + 30
        )


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each bound: what was measured and whether it held."""
    found = result["audit"]
    checks: list[tuple[str, Any, bool]] = [
        (f"audit: {name} = 0", found[name], found[name] == 0)
        for name in ("lost", "duplicated", "oversold", "stock_mismatch", "orders_without_event")
    ]
    gaps = found["products_with_version_gaps"]
    checks.append(("audit: product versions consecutive", len(gaps), not gaps))
    unended = found["outcomes"].get("abandoned", 0) + found["outcomes"].get("other", 0)
    checks.append(("every order ended accepted or out of stock", unended, unended == 0))
    failed_faults = [f for f in result["faults"] if "error" in f]
    checks.append(("every fault struck, its part back", len(failed_faults), not failed_faults))
    drain, bound = result["drain_seconds"], BOUNDS["drain_seconds"]
    checks.append(
        (
            f"lag, queue depth and backlog 0 within {bound:g} s of the load's end",
            drain,
            drain is not None and drain <= bound,
        )
    )
    samples = [s for s in result["samples"] if s["t"] <= result["load_seconds"]]
    warm = next((s for s in samples if s["t"] >= BOUNDS["warm_up_seconds"]), None)
    if warm is not None and samples[-1] is not warm:
        for kind in ("products", "orders", "consumer"):
            start, end = warm["memory_mb"].get(kind, 0), samples[-1]["memory_mb"].get(kind, 0)
            growth = end / start if start else math.inf
            limit = BOUNDS["memory_growth"]
            checks.append(
                (
                    f"{kind}: memory at the end / after warm-up <= {limit:g}",
                    round(growth, 2),
                    growth <= limit,
                )
            )
    horizons = {
        "order_outbox": SOAK_SETTINGS["outbox_retention_seconds"],
        "product_outbox": SOAK_SETTINGS["outbox_retention_seconds"],
        "order_keys": SOAK_SETTINGS["idempotency_key_ttl_seconds"],
    }
    every = SOAK_SETTINGS["outbox_purge_every_seconds"]
    for table, horizon in horizons.items():
        peak = max((s["rows"][table] for s in samples if s.get("rows")), default=0)
        grew = peak - result["rows_before"].get(table, 0)
        limit = BOUNDS["table_slack"] * result["peak_rate"] * (horizon + every)
        checks.append((f"{table}: peak rows over the start <= {limit:,.0f}", grew, grew <= limit))
    return [{"check": c, "measured": m, "held": bool(h)} for c, m, h in checks]


# ---------------------------------------------------------------- the run


def run(plan: Plan) -> int:
    stack = load_stack_settings()
    site: Site = Cluster(stack) if plan.cluster else SingleNode(stack)
    settings = site.shop.migration_account()  # reads both services' tables (audit, sampler)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"{stamp}-soak"
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="shop-soak-"))
    say(
        f"{plan.orders:,} orders from {plan.customers:,} customers, a fault every "
        f"{plan.fault_every:g} s on the {site.name}; results in {out.relative_to(ROOT)}"
    )
    binary = ensure_go_tool(SOAKLOAD)
    try:
        site.serve(stack.replace(**SOAK_SETTINGS))  # the soak's purge horizons
        users = customers_file(site.shop, plan.customers, scratch)
        product_url = f"http://127.0.0.1:{settings.http.product_port}"
        scarce_stock = max(10, plan.orders // 10)  # every 10th order, 2 units on average: runs out
        scarce = make_products(settings, 1, scarce_stock)[0]
        plenty = make_products(settings, 4, 1_000_000_000)
        products = {scarce: scarce_stock, **dict.fromkeys(plenty, 1_000_000_000)}
        listed = ",".join(map(str, products))
        versions = query(settings, f"SELECT id, version FROM products WHERE id IN ({listed})")
        offsets = {
            "order": _event_offsets(settings, settings.kafka.order_events_topic),
            "product": _event_offsets(settings, settings.kafka.product_events_topic),
            "versions": {int(r[0]): int(r[1]) for r in versions},
        }
        rows_before = {t: _count(settings, f"SELECT COUNT(*) FROM {t}") for t in TABLES}
        orders_file = scratch / "orders.tsv"
        command = [
            str(binary),
            f"-orders={plan.orders}",
            f"-c={plan.clients}",
            f"-customers={scratch / 'customers.tsv'}",
            f"-run=soak-{stamp}-{uuid.uuid4().hex[:6]}",
            f"-scarce={scarce}",
            f"-plenty={','.join(map(str, plenty))}",
            f"-orders-url=http://127.0.0.1:{settings.http.order_port}",
            f"-products-url={product_url}",
            f"-out={orders_file}",
        ]
        t0 = time.monotonic()
        progress: list[dict[str, Any]] = []
        with Sampler(site, users, plan.sample_every, t0) as sampler:
            with Faults(site, plan, t0) as faults:
                load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                assert load.stdout is not None
                shown = 0.0
                for text in load.stdout:
                    line = json.loads(text)
                    line["t"] = round(time.monotonic() - t0, 1)
                    progress.append(line)
                    if line["t"] - shown >= (1 if sys.stderr.isatty() else 10) or line["final"]:
                        shown = line["t"]
                        latest = sampler.samples[-1].get("rows") if sampler.samples else None
                        stored = latest["stored"] if latest else None
                        text_line = progress_line(line, plan, stored, faults)
                        end = "\r" if sys.stderr.isatty() and not line["final"] else "\n"
                        print(f"soak: {text_line}", end=end, file=sys.stderr, flush=True)
                if load.wait() != 0:
                    raise RuntimeError(f"soakload exited with {load.returncode}")
                load_seconds = round(time.monotonic() - t0, 1)
                say(f"load done after {load_seconds:g} s; waiting for the fault under way")
            say("draining: every accepted order stored, lag, depth and backlog 0")
            accepted = progress[-1]["accepted"]
            sampler.every = 1.0
            drain_began = time.monotonic()
            drain_seconds = None
            while time.monotonic() - drain_began < 3 * BOUNDS["drain_seconds"]:
                time.sleep(1)
                latest = sampler.samples[-1]
                if latest["t"] > load_seconds and _drained(latest, accepted):
                    drain_seconds = round(latest["t"] - load_seconds, 1)
                    break
        say(f"drained in {drain_seconds} s; auditing")
        result: dict[str, Any] = {
            "started": stamp,
            "plan": dataclasses.asdict(plan),
            "soak_settings": SOAK_SETTINGS,
            "bounds": BOUNDS,
            "load_seconds": load_seconds,
            "drain_seconds": drain_seconds,
            "load": progress[-1],
            "peak_rate": peak_rate(progress),
            "rows_before": rows_before,
            "faults": faults.done,
            "progress": progress,
            "samples": sampler.samples,
            "audit": audit(settings, users, orders_file, products, offsets),
        }
        recoveries(progress, result["faults"])
        result["verdicts"] = verdicts(result)
    finally:
        site.restore()
        shutil.rmtree(scratch, ignore_errors=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    from bench.soak_report import render

    (out / "report.html").write_text(render(result))
    for line in summary(result):
        say(line)
    say(f"written: {(out / 'report.html').relative_to(ROOT)}")
    return 0 if all(v["held"] for v in result["verdicts"]) else 1


def peak_rate(progress: list[dict[str, Any]]) -> float:
    """The most orders ended a second over any 10 s of the load."""
    done = [(p["t"], p["done"]) for p in progress]
    rates = [
        (b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(done, done[10:], strict=False) if b[0] > a[0]
    ]
    return round(max(rates, default=done[-1][1] / max(done[-1][0], 1.0) if done else 0.0), 1)


def summary(result: dict[str, Any]) -> list[str]:
    found = result["audit"]
    recovered = [f.get("recovered_after_s") or 0 for f in result["faults"]]
    lines = [
        f"{found['accepted']:,} orders accepted in {result['load_seconds']:g} s, "
        f"{found['stored']:,} stored; {len(result['faults'])} faults, "
        f"longest recovery {max(recovered, default=0):g} s",
        f"audit: lost {found['lost']}, duplicated {found['duplicated']}, "
        f"oversold {found['oversold']}, stock mismatch {found['stock_mismatch']}, "
        f"orders without event {found['orders_without_event']}, "
        f"products with version gaps {len(found['products_with_version_gaps'])}",
    ]
    for v in result["verdicts"]:
        lines.append(f"{'held  ' if v['held'] else 'FAILED'} {v['check']}: {v['measured']}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=48, help="concurrent clients")
    parser.add_argument("--customers", type=int, default=2000, help="at least 1,000")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    parser.add_argument("--down-seconds", type=float, default=3.0, help="a killed part stays down")
    parser.add_argument("--pause-seconds", type=float, default=5.0, help="a paused broker stays")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument(
        "--cluster", action="store_true", help="on `make cluster` (started if needed)"
    )
    args = parser.parse_args()
    if args.customers < 1000:
        parser.error("--customers: at least 1,000")
    plan = Plan(
        args.orders,
        args.clients,
        args.customers,
        args.fault_every,
        args.down_seconds,
        args.pause_seconds,
        args.sample_seconds,
        args.cluster,
    )
    return run(plan)


if __name__ == "__main__":
    raise SystemExit(main())
