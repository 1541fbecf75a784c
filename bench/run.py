"""`make bench`: load on every path, the limits, the audit, and a report with plots.

Runs against the system `make up` started (settings as usual: config.yaml < environment) and
writes bench/results/<timestamp>/results.json and report.html. A full run takes about 7 minutes,
`--quick` about 2 (both include about 40 s of idle latency). The load generator is shopload
(`bench.loadgen`); the order load comes from 2,000 customers in turn, each with their own token
(`bench.customers`); a catalogue operator's token makes the products.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench import idle, limits, report
from bench.background import Background
from bench.customers import Customers, warm_token_caches
from bench.loadgen import LoadResult, catalogue_headers, ensure_shopload, run_load, shopload_version
from devstack import identities, rabbitmq
from devstack import kafka as stack_kafka
from devstack.settings import StackSettings, load_stack_settings
from shop import jsonutil
from shop.messaging.kafka import client_config, ensure_topics
from shop.messaging.ports import Outgoing
from shop.messaging.rabbitmq import RabbitBroker
from shop.orders.domain import AsyncChannel

ROOT = Path(__file__).resolve().parents[1]
FLOOR_PORT = 8090
SPREAD_PRODUCTS = 200
BIG_STOCK = 100_000_000


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


class Plan:
    """How much to run: the full sweep (about 7 minutes) or a quick look (about 2 minutes)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.connections = [50, 200] if quick else [50, 100, 200, 400, 800]
        self.seconds = 2.0 if quick else 5.0
        self.rates = [250, 1000] if quick else [250, 500, 1000, 1500, 2000, 2500, 3000, 4000]
        self.drain_orders = 10_000 if quick else 50_000
        self.raw_kafka = 50_000 if quick else 300_000
        self.raw_rabbitmq = 3000 if quick else 20_000
        self.raw_rows = 10_000 if quick else 60_000


# ---------------------------------------------------------------- database helpers


async def _query(settings: StackSettings, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    conn = await idle.connect(settings)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())
    finally:
        await conn.ensure_closed()  # QUIT, and the TLS stream shut before the loop ends


def query(settings: StackSettings, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    return asyncio.run(_query(settings, sql, args))


def _post_json(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (our own loopback URL)
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        result: dict[str, Any] = json.loads(response.read())
        return result


def make_products(settings: StackSettings, count: int, stock: int | None) -> list[int]:
    url = f"http://127.0.0.1:{settings.http.product_port}/products"
    tag = uuid.uuid4().hex[:6]
    auth = catalogue_headers(settings)
    return [
        _post_json(url, {"name": f"bench-{tag}-{i}", "price": 1.5, "stock": stock}, auth)["id"]
        for i in range(count)
    ]


# ---------------------------------------------------------------- depth sampling


class DepthReader:
    """Kafka consumer lag (the order consumers' group, read as the stack's administrator, who
    never joins it) and the RabbitMQ order queue's depth; NaN for a reading that failed (a gap
    in a plot, not a failed run). One Kafka client, closed on exit; one thread at a time."""

    def __init__(self, settings: StackSettings) -> None:
        self._settings = settings
        self._consumer = Consumer(
            {
                **client_config(stack_kafka.as_admin(settings)),
                "group.id": settings.kafka.consumer_group,
                "log_level": 0,  # (a broker down is a NaN reading, not a line on stderr)
            }
        )

    def __enter__(self) -> DepthReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._consumer.close()

    def lag(self) -> float:
        try:
            topic = self._settings.kafka.topic
            meta = self._consumer.list_topics(topic, timeout=2).topics[topic]
            parts = [TopicPartition(topic, p) for p in meta.partitions]
            lag = 0
            for tp in self._consumer.committed(parts, timeout=2):
                _low, high = self._consumer.get_watermark_offsets(tp, timeout=2)
                lag += max(0, high - max(tp.offset, 0))
            return float(lag)
        except Exception:
            return float("nan")

    def queue_depth(self) -> float:
        s = self._settings
        url = (
            f"http://127.0.0.1:{s.stack.management_port}/api/queues/"
            f"{'%2F' if s.rabbitmq.vhost == '/' else s.rabbitmq.vhost}/{s.rabbitmq.queue}"
        )
        request = urllib.request.Request(url)
        token = b64encode(f"{s.stack.admin_user}:{s.stack.admin_password}".encode())
        request.add_header("Authorization", f"Basic {token.decode()}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 (loopback)
                data = json.loads(response.read())
            return float(data.get("messages_ready", 0) + data.get("messages_unacknowledged", 0))
        except Exception:
            return float("nan")

    def depths(self) -> dict[str, float]:
        return {"kafka": self.lag(), "rabbitmq": self.queue_depth()}


class DepthSampler(Background):
    """Samples Kafka consumer lag and RabbitMQ queue depth twice a second, in a thread."""

    join_timeout = 5.0

    def __init__(self, settings: StackSettings) -> None:
        super().__init__("depth-sampler")
        self._settings = settings
        self.samples: list[dict[str, float]] = []
        self._t0 = time.monotonic()

    def mark(self) -> float:
        return round(time.monotonic() - self._t0, 2)

    def loop(self) -> None:
        with DepthReader(self._settings) as reader:
            while not self.stopping.wait(0.5):
                self.samples.append({"t": self.mark(), **reader.depths()})


# ---------------------------------------------------------------- the runs


def wait_idle(settings: StackSettings, timeout: float = 120.0) -> dict[str, float]:
    """Wait (up to `timeout`) until no command waits for a consumer; the depths last seen."""
    with DepthReader(settings) as reader:
        deadline = time.monotonic() + timeout
        while True:
            depths = reader.depths()
            if all(v == 0 for v in depths.values()) or time.monotonic() > deadline:
                return depths
            time.sleep(1)


def start_floor(workers: int) -> subprocess.Popen[bytes]:
    floor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.floor:app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(FLOOR_PORT),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{FLOOR_PORT}/healthz", timeout=1)
        except OSError:
            time.sleep(0.2)
            continue
        return floor
    floor.kill()
    raise RuntimeError("the HTTP floor server did not start")


def sweep(name: str, url: str, plan: Plan, **load: Any) -> list[dict[str, Any]]:
    results = []
    for connections in plan.connections:
        result = run_load(url, connections=connections, seconds=plan.seconds, **load)
        say(
            f"{name:9} c={connections:<4} {result.rps:8.0f}/s  p50 {result.p50_ms:6.1f} ms  "
            f"p99 {result.p99_ms:7.1f} ms  failed {result.failed}"
        )
        results.append(result.as_dict())
    return results


def open_loop(name: str, url: str, plan: Plan, **load: Any) -> list[dict[str, Any]]:
    results = []
    for rate in plan.rates:
        result = run_load(
            url, connections=max(50, rate // 10), seconds=plan.seconds, rate=rate, **load
        )
        ok = result.failed == 0 and result.p99_ms <= 50
        say(
            f"{name:9} {rate:5}/s offered  {result.rps:8.0f}/s done  p99 {result.p99_ms:7.1f} ms"
            f"  {'ok' if ok else 'over'}"
        )
        results.append(result.as_dict())
        if result.p99_ms > 500 or result.rps < rate * 0.8:
            break  # far past saturation: higher rates tell nothing new
    return results


def drain(
    settings: StackSettings, channel: AsyncChannel, orders: int, product_ids: list[int]
) -> dict[str, Any]:
    """Fill a private topic/queue with commands, then time one standalone consumer emptying it."""
    name = f"bench-drain-{channel}-{uuid.uuid4().hex[:6]}"
    commands = [
        limits.order_command(i, product_id=product_ids[i % len(product_ids)], channel=channel)
        for i in range(orders)
    ]
    # RabbitMQ: a vhost of its own, where the order service's accounts get their rights on
    # these names (they have one set of rights per vhost: "/" holds `make up`'s).
    private = settings.replace(rabbitmq_vhost=name, rabbitmq_queue=name)
    names = {"KAFKA_TOPIC": name, "KAFKA_CONSUMER_GROUP": name, "KAFKA_DLQ_TOPIC": f"{name}.dlq"}
    # The consumer as the order service (its own accounts, as devstack starts it), allowed its
    # topics and group here (`provision`); the bench fills the topic as the administrator.
    env = {**os.environ, **identities.service_env("orders"), **names, "RABBITMQ_QUEUE": name}
    consumer_settings = settings.replace(**{k.lower(): v for k, v in names.items()})
    stack_kafka.provision(consumer_settings)
    admin = stack_kafka.as_admin(settings)
    if channel == "kafka":
        asyncio.run(ensure_topics(admin, [name]))
        producer = Producer({**client_config(admin), "acks": "all", "linger.ms": 5})
        for i, body in enumerate(commands):
            producer.produce(name, key=str(product_ids[i % len(product_ids)]), value=body)
            if i % 5000 == 0:
                producer.poll(0)
        producer.flush(60)
    else:
        rabbitmq.provision(private)
        env["RABBITMQ_VHOST"] = name
        asyncio.run(_fill_queue(private, name, commands))
    consumer = subprocess.Popen(
        [sys.executable, "-m", "shop", "consume", channel],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.perf_counter()
    stored = 0
    marks = ",".join(["%s"] * len(product_ids))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stored = int(
                query(
                    settings,
                    f"SELECT COUNT(*) FROM orders WHERE product_id IN ({marks}) AND channel = %s",
                    (*product_ids, channel),
                )[0][0]
            )
            if stored >= orders:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - started
    finally:
        consumer.terminate()
        consumer.wait(20)
    if channel == "rabbitmq":
        rabbitmq.remove_vhost(private)
    limits.delete_topics(admin, [name, f"{name}.dlq"])
    stack_kafka.revoke(settings, name)
    # The rate is taken between the first and the last stored order (the rows' own clocks),
    # so the consumer process's start-up and group join are not counted.
    ((first_at, last_at),) = query(
        settings,
        f"SELECT MIN(created_at), MAX(created_at) FROM orders WHERE product_id IN ({marks}) "
        "AND channel = %s",
        (*product_ids, channel),
    )
    storing = max((last_at - first_at).total_seconds(), 1e-3)
    return {
        "orders": orders,
        "stored": stored,
        "seconds_with_startup": round(seconds, 2),
        "seconds_storing": round(storing, 2),
        "per_second": round(stored / storing),
    }


async def _fill_queue(settings: StackSettings, name: str, bodies: list[bytes]) -> None:
    """Fill the queue (provisioned: declared as the consumer declares it) as intake does."""
    rabbit = RabbitBroker(settings.rabbitmq.model_copy(update={"queue": name}), timeout=10)
    queue = rabbit.publisher()
    rabbit.start()
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    await rabbit.check()
                    break
                except ConnectionError:
                    await asyncio.sleep(0.1)
        for start in range(0, len(bodies), 500):
            chunk = bodies[start : start + 500]
            await queue.publish(
                [Outgoing(str(start + i), body) for i, body in enumerate(chunk)], timeout=30
            )
    finally:
        await rabbit.close()


# ---------------------------------------------------------------- audit


def audit(
    settings: StackSettings,
    accepted: dict[str, int],
    products: dict[str, list[int]],
    since: dt.datetime,
    initial: dict[int, int],
) -> dict[str, Any]:
    """Every accepted order stored exactly once, and no tracked stock oversold."""
    all_products = sorted({p for ids in products.values() for p in ids})
    marks = ",".join(["%s"] * len(all_products))

    def stored_by_channel() -> dict[str, int]:
        rows = query(
            settings,
            f"SELECT channel, COUNT(*) FROM orders WHERE product_id IN "
            f"({marks}) AND created_at >= %s GROUP BY channel",
            (*all_products, since),
        )
        return {str(channel): int(count) for channel, count in rows}

    deadline = time.monotonic() + 120
    stored = stored_by_channel()
    while time.monotonic() < deadline and any(stored.get(ch, 0) < n for ch, n in accepted.items()):
        time.sleep(0.5)
        stored = stored_by_channel()
    lost = sum(max(0, n - stored.get(ch, 0)) for ch, n in accepted.items())
    duplicated = sum(max(0, stored.get(ch, 0) - n) for ch, n in accepted.items())
    # Two queries for every product at once: orders has no index on product_id (the service
    # never looks orders up by product), so a query per product scanned the table each time.
    tracked = list(initial)
    product_marks = ",".join(["%s"] * len(tracked))
    stocks = dict(
        query(settings, f"SELECT id, stock FROM products WHERE id IN ({product_marks})", tracked)
    )
    confirmed = dict(
        query(
            settings,
            f"SELECT product_id, SUM(quantity) FROM orders WHERE status = 'confirmed' "
            f"AND product_id IN ({product_marks}) GROUP BY product_id",
            tracked,
        )
    )
    oversold = 0
    for product_id, start in initial.items():
        stock = stocks.get(product_id)
        taken = int(confirmed.get(product_id) or 0)
        if stock is None or stock < 0 or int(stock) + taken != start:
            oversold += 1
    return {
        "accepted": accepted,
        "stored": stored,
        "lost": lost,
        "duplicated": duplicated,
        "oversold": oversold,
        "ok": lost == duplicated == oversold == 0,
    }


# ---------------------------------------------------------------- main


def machine(settings: StackSettings) -> dict[str, Any]:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    versions: dict[str, str] = {"python": platform.python_version()}
    versions["mariadb"] = str(query(settings, "SELECT VERSION()")[0][0])
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{settings.stack.management_port}/api/overview"
        )
        token = b64encode(f"{settings.stack.admin_user}:{settings.stack.admin_password}".encode())
        request.add_header("Authorization", f"Basic {token.decode()}")
        with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310
            versions["rabbitmq"] = json.loads(response.read())["rabbitmq_version"]
    except OSError:
        versions["rabbitmq"] = "unknown"
    from devstack import kafka as stack_kafka

    versions["kafka"] = stack_kafka.KAFKA_VERSION
    versions["load_generator"] = shopload_version()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "versions": versions,
        "service_workers": settings.http.workers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 2 minutes instead of 7")
    parser.add_argument("--out", type=Path, help="results directory (bench/results/<time>)")
    parser.add_argument("--layout", default="single", help="the system's layout, for the report")
    args = parser.parse_args()
    plan = Plan(args.quick)
    settings = load_stack_settings()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    ensure_shopload()
    customers = Customers.make(settings)
    results: dict[str, Any] = {
        "started": stamp,
        "quick": plan.quick,
        "layout": args.layout,
        "machine": machine(settings),
        "customers": {
            "count": len(customers),
            "first_user": customers.first_user,
            "rate_per_second": settings.orders.rate_per_second,
            "burst": settings.orders.burst,
        },
    }
    say(f"{'quick' if plan.quick else 'full'} run; results in {out}")
    say(f"order load from {customers.describe()}")
    say("idle latency: single orders, 202 -> stored (waiting for empty queues first)")
    depths = wait_idle(settings)
    results["idle_latency"] = {"depths_before": depths, **idle.measure(settings)}
    for line in idle.describe(results["idle_latency"]):
        say(line)
    since = jsonutil.utcnow().replace(microsecond=0)
    spread = make_products(settings, SPREAD_PRODUCTS, BIG_STOCK)
    hot = make_products(settings, 1, BIG_STOCK)
    initial = dict.fromkeys(spread + hot, BIG_STOCK)
    orders_url = f"http://127.0.0.1:{settings.http.order_port}/orders"
    with tempfile.TemporaryDirectory() as tmp:
        warm = warm_token_caches(
            f"http://127.0.0.1:{settings.http.order_port}", customers, Path(tmp)
        )
        results["token_warm_up"] = warm.as_dict()
        say(
            f"token caches warmed: {warm.requests:,} reads of the customers' orders in "
            f"{warm.seconds:.1f} s, answers {warm.statuses or warm.errors}"
        )
        # The order requests: the customers in turn, each with their own token.
        spread_orders = {
            "requests": customers.order_requests(Path(tmp) / "spread.tsv", spread, seed="spread")
        }
        hot_orders = {"requests": customers.order_requests(Path(tmp) / "hot.tsv", hot, seed="hot")}
        targets: dict[str, tuple[str, dict[str, Any]]] = {
            "sync": (f"{orders_url}/sync", spread_orders),
            "sync_hot": (f"{orders_url}/sync", hot_orders),
            "kafka": (f"{orders_url}/async/kafka", spread_orders),
            "rabbitmq": (f"{orders_url}/async/rabbitmq", spread_orders),
            "products": (
                f"http://127.0.0.1:{settings.http.product_port}/products?limit=100",
                {"method": "GET"},
            ),
        }
        say("limits: the HTTP floor")
        floor = start_floor(settings.http.workers)
        try:
            results["floor"] = sweep(
                "floor",
                f"http://127.0.0.1:{FLOOR_PORT}/orders/async/floor",
                plan,
                **spread_orders,  # the same requests (customers' tokens too) as the order paths
            )
        finally:
            floor.terminate()
            floor.wait(20)
        results["sweep"], results["open_loop"] = {}, {}
        with DepthSampler(settings) as sampler:
            marks: list[dict[str, Any]] = []
            for name, (url, load) in targets.items():
                say(f"closed loop: {name}")
                marks.append({"t": sampler.mark(), "label": f"{name} sweep"})
                results["sweep"][name] = sweep(name, url, plan, **load)
            for name, (url, load) in targets.items():
                say(f"open loop: {name}")
                marks.append({"t": sampler.mark(), "label": f"{name} rates"})
                results["open_loop"][name] = open_loop(name, url, plan, **load)
            marks.append({"t": sampler.mark(), "label": "load ends"})
            accepted = _accepted(results)
            say("waiting for the consumers to store every accepted order (audit)")
            results["audit"] = audit(
                settings, accepted, {"spread": spread, "hot": hot}, since, initial
            )
            marks.append({"t": sampler.mark(), "label": "all stored"})
        results["depth"] = {"samples": sampler.samples, "marks": marks}
    say("acceptance-to-stored times of the async orders (reads every stored order)")
    results["accept_to_stored_ms"] = _accept_to_stored(settings, spread, since)
    say("limits: consumer drain rate without HTTP load")
    results["drain"] = {
        ch: drain(settings, ch, plan.drain_orders, make_products(settings, 20, BIG_STOCK))
        for ch in ("kafka", "rabbitmq")
    }
    say("limits: raw Kafka produce, raw RabbitMQ publish, raw batched inserts")
    results["limits"] = {
        "kafka_produce": limits.kafka_produce(
            stack_kafka.as_admin(settings), messages=plan.raw_kafka
        ),
        "rabbitmq_publish": asyncio.run(
            limits.rabbitmq_publish(settings, messages=plan.raw_rabbitmq)
        ),
        "batched_inserts": asyncio.run(limits.batched_inserts(settings, rows=plan.raw_rows)),
    }
    results["finished"] = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "report.html").write_text(report.render(results))
    say(f"report: {out / 'report.html'}")
    say(
        f"audit: lost {results['audit']['lost']}, duplicated {results['audit']['duplicated']}, "
        f"oversold {results['audit']['oversold']}"
    )
    for line in report.summary_lines(results):
        say(line)
    return 0 if results["audit"]["ok"] else 1


def _accepted(results: dict[str, Any]) -> dict[str, int]:
    accepted = {"sync": 0, "kafka": 0, "rabbitmq": 0}
    for section in ("sweep", "open_loop"):
        for name, runs in results[section].items():
            channel = "sync" if name.startswith("sync") else name
            if channel in accepted:
                codes = (201,) if channel == "sync" else (202,)
                accepted[channel] += sum(LoadResult(**r).count(*codes) for r in runs)
    return accepted


def _accept_to_stored(
    settings: StackSettings, products: list[int], since: dt.datetime
) -> dict[str, Any]:
    """From the id's UUIDv7 timestamp (intake, ms) to the row's created_at (stored)."""
    marks = ",".join(["%s"] * len(products))
    rows = query(
        settings,
        f"SELECT id, created_at, channel FROM orders WHERE product_id IN "
        f"({marks}) AND created_at >= %s AND channel <> 'sync'",
        (*products, since),
    )
    delays: dict[str, list[float]] = {"kafka": [], "rabbitmq": []}
    for order_id, created_at, channel in rows:
        accepted_ms = int.from_bytes(order_id[:6], "big")
        stored_ms = created_at.replace(tzinfo=dt.UTC).timestamp() * 1000
        delays[channel].append(max(0.0, stored_ms - accepted_ms))
    return {ch: idle.percentiles(v) for ch, v in delays.items()}


if __name__ == "__main__":
    sys.exit(main())
