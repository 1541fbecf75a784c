"""`make bench-compare`: a base commit run beside the current checkout, same servers, same load.

Both sides run fresh and alike: the base from a git worktree of its commit (in
`.stack/baseline-<sha>/`, with its own virtual environment from its own lock file), the head
from this checkout (or, with `--head REF`, from a worktree of that commit). Each side gets its
own database (`shop_cmp_base`, `shop_cmp_head`), its own Kafka topics and consumer group and
its own RabbitMQ queue (names prefixed `bench-cmp-base-` / `bench-cmp-head-`) and its own ports
(18080/18081 and 28080/28081), against the same MariaDB, Kafka and RabbitMQ. The services that
`make up` runs (8080/8081) are left alone: their database holds every earlier bench run, which
would make the head slower for reasons that are not its code.

Then, for each path and connection count, both sides get the same closed-loop load (shopload,
`bench.loadgen`; the orders from 2,000 customers in turn, each with their own token), one after
the other (who goes first alternates from step to step and from round to round), for several
rounds, so that noise on the shared machine hits both. Before every run, each side has
stored every order it accepted so far and its processes are quiet, and the shared servers are
quiet too (their CPU and the disks' writes low: the last run's pages flushed), or a timeout
passed, so no run competes with either side's backlog or pays for the run before it.
Reported per step: each side's throughput (2xx answers per second) and p99, medians over
rounds; the ratio head/base (the median of the per-round ratios); and every non-2xx answer.

Writes bench/results/<time>-compare/compare.json, compare.md and compare.html (a plot of both
sides per path, with the speed-up and, against 0fc452c, issue 9's goal), prints the table, and
at the end stops every process it started and drops the databases, topics, groups and queues
it made.

    python -m bench.compare --base 0fc452c [--head REF] [--quick] [--rounds N] [--seconds S]
        [--paths sync,kafka,rabbitmq,products] [--connections 50,200,800] [--trace-ratio 0.1]

With `--trace-ratio`, the head runs with tracing on at that sampling ratio, exporting to an
OTLP receiver that keeps nothing (`bench.otlp_sink`), and the base as it is: the cost of
tracing (docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from bench import baseline_access, compare_report, idle
from bench.customers import Customers, warm_token_caches
from bench.loadgen import LoadResult, catalogue_headers, ensure_shopload, run_load
from devstack import identities, mariadb, rabbitmq
from devstack import kafka as stack_kafka
from devstack.settings import StackSettings, load_stack_settings
from shop.messaging.kafka import client_config
from shop.settings import Settings, flat_names
from shop.storage.migrations import connect_as_migrator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE = "0fc452c"
PRODUCTS = 200
BIG_STOCK = 100_000_000
READY_TIMEOUT = 120.0
OTLP_SINK_PORT = 14318  # where the head exports its spans under --trace-ratio
PATHS = ("sync", "hot", "kafka", "rabbitmq", "products")
PATH_LABELS = {
    "sync": "POST /orders/sync",
    "hot": "POST /orders/sync (one product)",
    "kafka": "POST /orders/async/kafka",
    "rabbitmq": "POST /orders/async/rabbitmq",
    "products": "GET /products",
}
# The names a service process creates on the brokers, as of 0fc452c (used when a checkout's
# settings cannot be read); each side gets them with its own prefix.
KNOWN_NAMES = {
    "kafka_topic": "orders",
    "kafka_product_events_topic": "product-events",
    "kafka_order_events_topic": "order-events",
    "kafka_dlq_topic": "orders.dlq",
    "kafka_consumer_group": "order-service",
    "rabbitmq_queue": "orders",
}
_NAME_FIELD = re.compile(r"kafka_\w*(topic|group)|rabbitmq_\w*queue")
# The names of this checkout's settings that name a topic or a consumer group.
KAFKA_NAMES = frozenset(
    n for n in flat_names(Settings) if _NAME_FIELD.fullmatch(n) and n.startswith("kafka_")
)


def say(message: str) -> None:
    print(f"compare: {message}", flush=True)


class Plan:
    def __init__(
        self,
        quick: bool,
        rounds: int | None,
        seconds: float | None,
        paths: Sequence[str] = PATHS,
        connections: Sequence[int] | None = None,
    ) -> None:
        self.quick = quick
        self.paths = list(paths)
        self.connections = list(connections or ([50, 200] if quick else [50, 200, 800]))
        self.rounds = rounds or (1 if quick else 3)
        self.seconds = seconds or (3.0 if quick else 10.0)
        self.warm_up = 1.0
        self.idle_orders = 20 if quick else 100
        self.settle_timeout = 60.0 if quick else 180.0


@dataclass
class Side:
    """One system under test: a checkout, its services, and everything they own."""

    name: str  # "base" or "head"
    checkout: Path
    commit: str
    product_port: int
    order_port: int
    db_name: str
    prefix: str
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    product_ids: list[int] = field(default_factory=list)
    requests: Path | None = None  # the order requests, one customer's token and body a line
    hot_requests: Path | None = None  # the same customers, every order for one product
    accepted: int = 0  # 201 + 202 answers on the order paths, warm-up included
    catalogue: dict[str, str] = field(default_factory=dict)  # Authorization to make products
    customers: Customers | None = None  # who places the orders (the same on both sides)
    baseline: bool = False  # logs in through `baseline_access` (a base from before accounts)

    @property
    def shop(self) -> str:
        return str(self.checkout / ".venv" / "bin" / "shop")

    def url(self, path: str) -> str:
        if path == "products":
            return f"http://127.0.0.1:{self.product_port}/products?limit=100"
        suffix = "sync" if path in ("sync", "hot") else f"async/{path}"
        return f"http://127.0.0.1:{self.order_port}/orders/{suffix}"


def trace(side: Side, ratio: float) -> subprocess.Popen[bytes]:
    """Start the OTLP sink and have `side` trace `ratio` of its requests to it (set before its
    services start); the caller stops the sink."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "bench.otlp_sink", "--port", str(OTLP_SINK_PORT)], cwd=ROOT
    )
    side.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{OTLP_SINK_PORT}"
    side.env["OTEL_TRACES_SAMPLER_ARG"] = str(ratio)
    side.commit = f"{side.commit} (tracing {ratio:g})"
    return sink


def make_sides(
    base: tuple[Path, str], head: tuple[Path, str], settings: StackSettings
) -> list[Side]:
    """Base and head, each (checkout, label) on its own ports, database and broker names, with
    the same catalogue operator (who makes the products) and the same customers (who order)."""
    sides = [
        Side("base", base[0], base[1], 18080, 18081, "shop_cmp_base", "bench-cmp-base-"),
        Side("head", head[0], head[1], 28080, 28081, "shop_cmp_head", "bench-cmp-head-"),
    ]
    catalogue = catalogue_headers(settings)
    customers = Customers.make(settings)
    for side in sides:
        side.env = side_env(side)
        side.catalogue = catalogue
        side.customers = customers
    return sides


# ---------------------------------------------------------------- checkouts


def git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def worktree(ref: str) -> tuple[Path, str]:
    """A worktree of `ref` (made once, then reused) with its own synced virtual environment."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = ROOT / ".stack" / f"baseline-{sha[:12]}"
    if not (path / ".git").exists():
        say(f"git worktree of {sha[:12]} in {path.relative_to(ROOT)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        # --force: also when a deleted folder is still registered as this worktree
        git("worktree", "add", "--force", "--detach", str(path), sha)
    say(f"installing {sha[:12]}'s locked dependencies in its own .venv (uv sync --frozen)")
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    subprocess.run(
        ["python3", "-m", "uv", "sync", "--frozen", "--quiet"],
        cwd=path,
        env=env,
        check=True,
        timeout=1800,
    )
    return path, sha


def broker_names(side: Side) -> dict[str, str]:
    """Every setting naming a topic, consumer group or queue, prefixed for this side."""
    script = (
        "import json; from shop.settings import Settings as S; "
        "d = S.model_construct().flat() if hasattr(S, 'flat') "
        "else {n: f.default for n, f in S.model_fields.items()}; "
        "print(json.dumps({n: v for n, v in d.items() if isinstance(v, str)}))"
    )
    names = dict(KNOWN_NAMES)
    try:
        done = subprocess.run(
            [str(side.checkout / ".venv" / "bin" / "python"), "-c", script],
            cwd=side.checkout,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        defaults: dict[str, str] = json.loads(done.stdout)
        names.update({n: v for n, v in defaults.items() if _NAME_FIELD.fullmatch(n)})
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        say(f"{side.name}: could not read its settings ({exc}); using the names of {DEFAULT_BASE}")
    return {n.upper(): f"{side.prefix}{v}" for n, v in names.items()}


def side_env(side: Side) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(broker_names(side))
    env.update(
        {
            "DB_NAME": side.db_name,
            # Its own RabbitMQ vhost, where the services' accounts get their rights on its names
            # (`start_services`; they have one set of rights per vhost).
            "RABBITMQ_VHOST": side.prefix.rstrip("-"),
            "PRODUCT_SERVICE_PORT": str(side.product_port),
            "ORDER_SERVICE_PORT": str(side.order_port),
            # The development issuer's key of this checkout (`make up` made it), wherever the
            # side's services run from.
            "AUTH_PUBLIC_KEY_FILE": str(Path(load_stack_settings().auth.public_key_file).resolve()),
        }
    )
    return env


# ---------------------------------------------------------------- servers' state


async def _sql(
    settings: StackSettings, sql: str, database: str | None = None
) -> list[tuple[Any, ...]]:
    conn = await connect_as_migrator(settings, database, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await asyncio.wait_for(cur.execute(sql), timeout=60)
            return list(await cur.fetchall())
    finally:
        await conn.ensure_closed()  # QUIT, and the TLS stream shut before the loop ends


def sql(
    settings: StackSettings, statement: str, database: str | None = None
) -> list[tuple[Any, ...]]:
    return asyncio.run(_sql(settings, statement, database))


def _rabbitmq_api(settings: StackSettings, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{settings.stack.management_port}/api/{path}", method=method
    )
    token = b64encode(f"{settings.stack.admin_user}:{settings.stack.admin_password}".encode())
    request.add_header("Authorization", f"Basic {token.decode()}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        body = response.read()
    return json.loads(body) if body else None


def clean(settings: StackSettings, sides: list[Side]) -> None:
    """Drop each side's database, topics, consumer groups, queues and exchanges (if any)."""
    existing = {str(row[0]) for row in sql(settings, "SHOW DATABASES")}
    for side in sides:
        if side.db_name in existing:
            sql(settings, f"DROP DATABASE `{side.db_name}`")
    prefixes = tuple(side.prefix for side in sides)
    for prefix in prefixes:  # the ACLs `start_services` made for the side's names
        stack_kafka.revoke(settings, prefix)
    admin = AdminClient(client_config(stack_kafka.as_admin(settings)))
    groups = [
        g.group_id
        for g in admin.list_consumer_groups(request_timeout=10).result(timeout=15).valid
        if g.group_id.startswith(prefixes)
    ]
    for attempt in range(10):  # a group is deletable once its members have left
        try:
            if groups:
                for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
                    future.result(timeout=15)
            break
        except Exception as exc:
            if attempt == 9:
                say(f"could not delete consumer groups {groups}: {exc}")
            time.sleep(2)
    topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=10).values():
            future.result(timeout=15)
        deadline = time.monotonic() + 60  # deletion is asynchronous; a new run re-creates them
        while time.monotonic() < deadline and any(
            t in admin.list_topics(timeout=10).topics for t in topics
        ):
            time.sleep(0.5)
    vhost = urllib.parse.quote(settings.rabbitmq.vhost, safe="")
    for kind in ("queues", "exchanges"):  # of runs before the sides had vhosts of their own
        for item in _rabbitmq_api(settings, f"{kind}/{vhost}?columns=name"):
            if str(item["name"]).startswith(prefixes):
                name = urllib.parse.quote(item["name"], safe="")
                _rabbitmq_api(settings, f"{kind}/{vhost}/{name}", method="DELETE")
    for side in sides:
        rabbitmq.remove_vhost(settings.replace(rabbitmq_vhost=side.env["RABBITMQ_VHOST"]))
    baseline_access.forget(settings, sides)


# ---------------------------------------------------------------- services


def start_services(side: Side, logs: Path) -> None:
    say(f"{side.name}: migrating {side.db_name}")
    settings = load_stack_settings()
    # As the migration account, also for a base that migrates as DB_USER (the services'
    # accounts may only read and write rows). A base from before the accounts migrates and
    # runs as its baseline account (`baseline_access`), and declares its own topology.
    migration_account = {
        "DB_USER": settings.db.migrate_user,
        "DB_PASSWORD": settings.db.migrate_password,
        "DB_MIGRATE_USER": settings.db.migrate_user,
        "DB_MIGRATE_PASSWORD": settings.db.migrate_password,
    }
    if side.baseline:
        migration_account = {}
    else:
        rabbitmq.provision(
            settings.replace(
                rabbitmq_vhost=side.env["RABBITMQ_VHOST"],
                rabbitmq_queue=side.env["RABBITMQ_QUEUE"],
            )
        )
    with (logs / f"{side.name}-migrate.log").open("ab") as log:
        subprocess.run(
            [side.shop, "migrate"],
            cwd=side.checkout,
            env={**side.env, **migration_account},
            check=True,
            timeout=300,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if not side.baseline:
        # Each service with its own accounts (as devstack starts them), allowed the side's
        # topics and group (`provision`).
        names = {n.lower(): v for n, v in side.env.items() if n.lower() in KAFKA_NAMES}
        stack_kafka.provision(settings.replace(**names))
    services: tuple[tuple[identities.Service, int], ...] = (
        ("products", side.product_port),
        ("orders", side.order_port),
    )
    for service, port in services:
        log = (logs / f"{side.name}-{service}.log").open("ab")
        side.processes.append(
            subprocess.Popen(
                [side.shop, "serve", service],
                cwd=side.checkout,
                env=side.env if side.baseline else {**side.env, **identities.service_env(service)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: workers are stopped with it
            )
        )
        log.close()
        wait_ready(side, port, side.processes[-1], logs / f"{side.name}-{service}.log")
        say(f"{side.name}: {service} ready on {port}")


def wait_ready(side: Side, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{side.name} on {port} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{side.name} on {port} not ready after {READY_TIMEOUT:.0f} s")


def stop_services(sides: list[Side]) -> None:
    running = [p for side in sides for p in side.processes if p.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in running:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    for side in sides:
        side.processes.clear()


# ---------------------------------------------------------------- load


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 (our own loopback URL)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        result: dict[str, Any] = json.loads(response.read())
        return result


def prepare_load(side: Side, directory: Path) -> None:
    """The same products on both sides (count, price, stock) and the same order requests: the
    same customers in turn, the same sequence of product indices (a file in `directory`; it
    holds the customers' tokens)."""
    url = f"http://127.0.0.1:{side.product_port}/products"
    products = ({"name": f"cmp-{i}", "price": 1.5, "stock": BIG_STOCK} for i in range(PRODUCTS))
    side.product_ids = [int(_post(url, body, side.catalogue)["id"]) for body in products]
    assert side.customers is not None, "make_sides gives every side its customers"
    side.requests = side.customers.order_requests(
        directory / f"{side.name}-orders.tsv", side.product_ids, seed=20261126
    )
    side.hot_requests = side.customers.order_requests(
        directory / f"{side.name}-hot-orders.tsv", side.product_ids[:1], seed=20261126
    )


def stored(settings: StackSettings, side: Side) -> int:
    return int(sql(settings, "SELECT COUNT(*) FROM orders", side.db_name)[0][0])


def cpu_seconds(pgids: set[int]) -> float:
    """CPU time used so far by every process in these process groups (services and workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process has gone
            continue
        if int(fields[2]) in pgids:  # pgrp; utime and stime follow at 11 and 12
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_CORES = 0.1  # a side is quiet below this (idle services poll: about 0.01-0.03)
QUIET_SERVERS = 0.25  # cores: MariaDB, Kafka and RabbitMQ together (idle: 0.02-0.04)
QUIET_DISK_MB_S = 4.0  # written to the machine's disks a second (idle: about 0.02)
SERVERS_SETTLE = 30.0  # seconds, at most, for the servers to finish what the last run left


def _disk_written_mb() -> float:
    """Megabytes written so far to the machine's disks (not loop, zram or device-mapper)."""
    sectors = 0
    for disk in Path("/sys/block").iterdir():
        if disk.name.startswith(("loop", "zram", "ram", "dm-")):
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            sectors += int((disk / "stat").read_text().split()[6])
    return sectors * 512 / 1e6


def servers_quiet(settings: StackSettings, timeout: float) -> float:
    """Wait until the servers both sides share are quiet: what the last run wrote flushed
    (InnoDB's dirty pages and purge, Kafka's segments), so that no run pays for the run
    before it, which was the other side's half the time; seconds waited."""
    daemons = (mariadb.daemon, stack_kafka.daemon, rabbitmq.daemon)
    pgids = {pid for daemon in daemons if (pid := daemon(settings).pid()) is not None}
    started = time.monotonic()
    cpu, disk = cpu_seconds(pgids), _disk_written_mb()
    while time.monotonic() - started < timeout:
        time.sleep(0.5)
        cpu_now, disk_now = cpu_seconds(pgids), _disk_written_mb()
        if (cpu_now - cpu) / 0.5 < QUIET_SERVERS and (disk_now - disk) / 0.5 < QUIET_DISK_MB_S:
            break
        cpu, disk = cpu_now, disk_now
    return round(time.monotonic() - started, 2)


def settle(settings: StackSettings, sides: list[Side], timeout: float) -> dict[str, float]:
    """Wait until every side has stored every order it accepted and its processes are quiet
    (its outbox relays, consumers and purges done too), then until the shared servers are
    (`servers_quiet`); seconds waited per side and for the servers."""
    waited: dict[str, float] = {}
    for side in sides:
        started = time.monotonic()
        pgids = {p.pid for p in side.processes}
        before = cpu_seconds(pgids)
        while time.monotonic() - started < timeout:
            time.sleep(0.5)
            after = cpu_seconds(pgids)
            busy = (after - before) / 0.5 >= QUIET_CORES
            before = after
            if not busy and stored(settings, side) >= side.accepted:
                break
        else:
            say(f"{side.name}: still busy or storing after {timeout:.0f} s; going on")
        waited[side.name] = round(time.monotonic() - started, 2)
    waited["servers"] = servers_quiet(settings, min(timeout, SERVERS_SETTLE))
    return waited


ASYNC_PATHS = ("kafka", "rabbitmq")
DRAIN_POLL = 0.25  # seconds between two counts of a side's stored orders


def drain(settings: StackSettings, side: Side, timeout: float) -> float | None:
    """Seconds from now until the side has stored every order it accepted (its consumers
    caught up), counted every DRAIN_POLL s; None past `timeout`. Right after an asynchronous
    run this is the backlog the run left: a side that accepts faster than it stores finishes
    its work after the load stopped, where the run's throughput does not see it."""
    started = time.monotonic()
    while stored(settings, side) < side.accepted:
        if time.monotonic() - started > timeout:
            return None
        time.sleep(DRAIN_POLL)
    return round(time.monotonic() - started, 2)


def stored_rps(result: dict[str, Any], drained_s: float | None) -> float | None:
    """2xx answers per second of the run and of its drain together: the rate at which the
    side accepted and also stored orders (None when the drain timed out)."""
    seconds = float(result["seconds"])
    if drained_s is None or not seconds:
        return None
    return ok_rps(result) * seconds / (seconds + drained_s)


def drive(
    side: Side, path: str, connections: int, seconds: float, rate: float | None = None
) -> LoadResult:
    """One shopload run on a side's path: closed loop, or at `rate` requests/s. Orders come
    from the side's customers, each with their own token (a commit without access tokens
    ignores them); `GET /products` is public."""
    if path == "products":
        return run_load(
            side.url(path), connections=connections, seconds=seconds, method="GET", rate=rate
        )
    requests = side.hot_requests if path == "hot" else side.requests
    result = run_load(
        side.url(path), connections=connections, seconds=seconds, requests=requests, rate=rate
    )
    side.accepted += result.count(201, 202)
    return result


def ok_rps(result: dict[str, Any]) -> float:
    """2xx answers per second: a side answering 503 fast must not look like a fast side."""
    ok = sum(int(n) for code, n in result["statuses"].items() if str(code).startswith("2"))
    return float(ok / result["seconds"]) if result["seconds"] else 0.0


def non_2xx(result: dict[str, Any]) -> int:
    ok = sum(int(n) for code, n in result["statuses"].items() if str(code).startswith("2"))
    return int(result["requests"]) - ok


# ---------------------------------------------------------------- the table


def summarise(runs: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for path in plan.paths:
        for connections in plan.connections:
            step = [r for r in runs if r["path"] == path and r["connections"] == connections]
            by_side = {s: [r["result"] for r in step if r["side"] == s] for s in ("base", "head")}
            ratios = [
                ok_rps(h) / ok_rps(b)
                for b, h in zip(by_side["base"], by_side["head"], strict=True)
                if ok_rps(b) > 0
            ]
            row: dict[str, Any] = {"path": path, "connections": connections}
            for s, results in by_side.items():
                row[f"{s}_rps"] = round(statistics.median(ok_rps(r) for r in results), 1)
                row[f"{s}_p99_ms"] = round(statistics.median(r["p99_ms"] for r in results), 1)
                row[f"{s}_non_2xx"] = sum(non_2xx(r) for r in results)
                row[f"{s}_rps_rounds"] = [round(ok_rps(r), 1) for r in results]
            row["ratio"] = round(statistics.median(ratios), 3) if ratios else None
            row["ratio_rounds"] = [round(r, 3) for r in ratios]
            p99_ratios = [
                h["p99_ms"] / b["p99_ms"]
                for b, h in zip(by_side["base"], by_side["head"], strict=True)
                if b["p99_ms"] > 0
            ]
            # below 1: the head's tail is shorter (issue 19 states its tail goals so)
            row["p99_ratio"] = round(statistics.median(p99_ratios), 3) if p99_ratios else None
            if path in ASYNC_PATHS:
                row.update(_stored_rates(step))
            rows.append(row)
    return rows


def _stored_rates(step: list[dict[str, Any]]) -> dict[str, Any]:
    """An asynchronous step's accepted-and-stored rates (`stored_rps`): per side the medians
    of the rate and of the drain after the run, and head/base as the median per-round ratio;
    None where a run has no drain (an older compare.json) or its drain timed out."""
    row: dict[str, Any] = {}
    rates: dict[str, list[float | None]] = {}
    for s in ("base", "head"):
        runs = [r for r in step if r["side"] == s]
        rates[s] = [stored_rps(r["result"], r.get("drained_s")) for r in runs]
        drains = [r.get("drained_s") for r in runs]
        known = [x for x in rates[s] if x is not None]
        row[f"{s}_stored_rps"] = round(statistics.median(known), 1) if known else None
        row[f"{s}_stored_rps_rounds"] = [None if x is None else round(x, 1) for x in rates[s]]
        known_drains = [d for d in drains if d is not None]
        row[f"{s}_drained_s"] = round(statistics.median(known_drains), 2) if known_drains else None
    ratios = [h / b for b, h in zip(rates["base"], rates["head"], strict=True) if b and h]
    row["stored_ratio"] = round(statistics.median(ratios), 3) if ratios else None
    row["stored_ratio_rounds"] = [round(r, 3) for r in ratios]
    return row


def markdown(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"base `{header['base'][:12]}` against head `{header['head']}`; "
        f"{header['rounds']} round(s) of {header['seconds']:g} s per step and side, "
        f"shopload closed loop; throughput = 2xx answers per second; head/base (throughput and "
        f"p99) = median over rounds of the per-round ratio.",
        "",
        f"Orders from {header['customers']:,} customers in turn, each with their own token "
        f"(rate limit per customer: {header['order_rate']:g}/s, burst {header['order_burst']}); "
        f"a 429 counts as non-2xx.",
        "",
        "| path | connections | base /s | head /s | head/base | base p99 ms | head p99 ms "
        "| p99 head/base | non-2xx base / head |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {PATH_LABELS[row['path']]} | {row['connections']} | {row['base_rps']:,.0f} "
            f"| {row['head_rps']:,.0f} | {_shown(row['ratio'], '.2f', 'x')} "
            f"| {row['base_p99_ms']:,.1f} "
            f"| {row['head_p99_ms']:,.1f} | {_shown(row.get('p99_ratio'), '.2f')} "
            f"| {row['base_non_2xx']} / {row['head_non_2xx']} |"
        )
    return "\n".join(lines + _stored_markdown(rows)) + "\n"


def _stored_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The asynchronous steps again, counting the time each side took after the run to store
    what it accepted (`drain`)."""
    stored = [row for row in rows if "stored_ratio" in row]
    if not stored:
        return []

    lines = [
        "",
        "Asynchronous paths, accepted and stored: a run's 2xx answers over the run plus the "
        "seconds the side took after it to store every order it accepted (counted every "
        f"{DRAIN_POLL:g} s); a side whose consumers fall behind during the load does that work "
        "after it, outside the throughput above.",
        "",
        "| path | connections | base stored /s | head stored /s | head/base "
        "| base stored s after | head stored s after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in stored:
        lines.append(
            f"| {PATH_LABELS[row['path']]} | {row['connections']} "
            f"| {_shown(row['base_stored_rps'], ',.0f')} "
            f"| {_shown(row['head_stored_rps'], ',.0f')} "
            f"| {_shown(row['stored_ratio'], '.2f', 'x')} "
            f"| {_shown(row['base_drained_s'], '.1f')} "
            f"| {_shown(row['head_drained_s'], '.1f')} |"
        )
    return lines


def _shown(value: float | None, spec: str, unit: str = "") -> str:
    """A table cell: `value` formatted by `spec` with its `unit`, or `-` when there is none."""
    return "-" if value is None else format(value, spec) + unit


def idle_markdown(idle_latency: dict[str, Any]) -> str:
    if not idle_latency:
        return ""
    lines = [
        "",
        "Idle latency, single orders one at a time, 202 to stored row (bench/idle.py):",
        "",
        "| side | channel | orders stored | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for side, result in idle_latency.items():
        for channel, r in result["channels"].items():
            lines.append(
                f"| {side} | {channel} | {r['stored']}/{r['orders']} | {r.get('p50', '-')} "
                f"| {r.get('p99', '-')} | {r.get('max', '-')} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # so that `finally` stops the services and cleans up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"commit (default {DEFAULT_BASE})")
    parser.add_argument("--head", help="a commit to compare instead of this checkout")
    parser.add_argument("--quick", action="store_true", help="50 and 200 connections, 3 s, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per run (default 10; quick 3)")
    parser.add_argument(
        "--paths", help=f"comma-separated, of {','.join(PATHS)} (default all)", default=""
    )
    parser.add_argument("--connections", help="comma-separated (default 50,200,800)", default="")
    parser.add_argument("--keep", action="store_true", help="leave databases, topics, queues")
    parser.add_argument(
        "--trace-ratio",
        type=float,
        help="the head traces this share of requests (OTEL_TRACES_SAMPLER_ARG) to an OTLP sink "
        "that keeps nothing (bench.otlp_sink); default: tracing off on both sides",
    )
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p] or list(PATHS)
    if unknown := set(paths) - set(PATHS):
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    levels = [int(c) for c in args.connections.split(",") if c]
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    plan = Plan(args.quick, args.rounds, args.seconds, paths, levels or None)
    settings = load_stack_settings()
    ensure_shopload()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"{stamp}-compare"
    out.mkdir(parents=True, exist_ok=True)
    base_path, base_sha = worktree(args.base)
    if args.head:
        head_path, head_sha = worktree(args.head)
        head_label = head_sha[:12]
    else:
        head_path = ROOT
        head_label = git("describe", "--always", "--dirty", "--abbrev=12")
    sides = make_sides((base_path, base_sha), (head_path, head_label), settings)
    sink = None
    if args.trace_ratio is not None:
        sink = trace(sides[1], args.trace_ratio)
        head_label = sides[1].commit
    header: dict[str, Any] = {
        "started": stamp,
        "base": base_sha,
        "head": head_label,
        "quick": plan.quick,
        "rounds": plan.rounds,
        "seconds": plan.seconds,
        "connections": plan.connections,
        "products": PRODUCTS,
        "customers": len(sides[0].customers) if sides[0].customers else 0,
        "order_rate": settings.orders.rate_per_second,  # the head's; the base has its own
        "order_burst": settings.orders.burst,
        "workers": settings.http.workers,  # the head's; the base runs with its own default
        "cores": os.cpu_count(),
        "head_trace_ratio": args.trace_ratio,
    }
    steps = len(plan.paths) * len(plan.connections) * plan.rounds
    say(
        f"base {base_sha[:12]} on 18080/18081, head {head_label} on 28080/28081; {steps} steps "
        f"of 2 x {plan.seconds:g} s, results in {out.relative_to(ROOT)}"
    )
    if customers := sides[0].customers:
        say(f"orders from {customers.describe()}")
    runs: list[dict[str, Any]] = []
    idle_latency: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="shop-compare-"))  # the requests files (tokens)
    clean(settings, sides)  # what a killed run may have left
    access = contextlib.ExitStack()  # closed last, after the services stopped
    try:
        access.enter_context(baseline_access.baseline_access(settings, sides))
        for side in sides:
            start_services(side, out)
            prepare_load(side, scratch)
        for side in sides:
            say(f"{side.name}: idle latency, {plan.idle_orders} single orders per channel")
            side_settings = settings.replace(
                db_name=side.db_name,
                # Reads the side's rows as the migration account: a base's own migration
                # gave the services' roles no rights on its database.
                db_user=settings.db.migrate_user,
                db_password=settings.db.migrate_password,
                product_service_port=side.product_port,
                order_service_port=side.order_port,
            )
            idle_latency[side.name] = idle.measure(side_settings, plan.idle_orders)
            # Each idle order was waited for until stored (or its timeout): count what is there.
            side.accepted = stored(settings, side)
            for line in idle.describe(idle_latency[side.name]):
                say(f"{side.name}: {line}")
        for side in sides:
            if side.customers:
                warm = warm_token_caches(
                    f"http://127.0.0.1:{side.order_port}", side.customers, scratch
                )
                say(f"{side.name}: token caches warmed ({warm.requests:,} reads: {warm.statuses})")
        say("warm-up: every path once per side, not counted")
        for path in plan.paths:
            for side in sides:
                settle(settings, sides, plan.settle_timeout)
                drive(side, path, plan.connections[0], plan.warm_up)
        cells = [(path, connections) for path in plan.paths for connections in plan.connections]
        for round_no in range(1, plan.rounds + 1):
            for position, (path, connections) in enumerate(cells):
                index = (round_no - 1) * len(cells) + position + 1
                # Who goes first alternates from step to step, and for each step from
                # round to round.
                order = sides if (position + round_no) % 2 == 0 else sides[::-1]
                parts = []
                for side in order:
                    waited = settle(settings, sides, plan.settle_timeout)
                    result = drive(side, path, connections, plan.seconds)
                    drained = None
                    if path in ASYNC_PATHS:
                        drained = drain(settings, side, plan.settle_timeout)
                    runs.append(
                        {
                            "round": round_no,
                            "path": path,
                            "connections": connections,
                            "side": side.name,
                            "settled_s": waited,
                            "drained_s": drained,
                            "result": result.as_dict(),
                        }
                    )
                    parts.append(
                        f"{side.name} {ok_rps(result.as_dict()):7,.0f} 2xx/s "
                        f"p99 {result.p99_ms:7.1f} ms non-2xx {non_2xx(result.as_dict())}"
                        + ("" if path not in ASYNC_PATHS else f" stored {drained} s after")
                    )
                say(
                    f"[{index}/{steps}] round {round_no} {path:8} c={connections:<4} "
                    + " | ".join(parts)
                )
        waited = settle(settings, sides, plan.settle_timeout)
        audit = {s.name: {"accepted": s.accepted, "stored": stored(settings, s)} for s in sides}
        say(f"accepted and stored per side: {audit} (waited {waited})")
    finally:
        say("stopping the services this run started")
        stop_services(sides)
        if sink is not None:
            sink.terminate()
            sink.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            say("dropping the databases, topics, consumer groups and queues this run made")
            clean(settings, sides)
        access.close()
    rows = summarise(runs, plan)
    header["finished"] = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    table = markdown(rows, header) + idle_markdown(idle_latency)
    (out / "compare.json").write_text(
        json.dumps(
            {**header, "stored": audit, "idle_latency": idle_latency, "steps": rows, "runs": runs},
            indent=2,
        )
    )
    (out / "compare.md").write_text(table)
    (out / "compare.html").write_text(compare_report.page(rows, header, PATH_LABELS, table))
    print(table, flush=True)
    say(f"written: {out.relative_to(ROOT)}/compare.json, compare.md and compare.html (plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
