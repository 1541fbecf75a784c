"""`devstack cluster up|down|status`: the system on clustered engines on this one machine.

Three Kafka KRaft nodes (replication factor 3), three RabbitMQ nodes (quorum queues), three
Galera nodes written through one at a time behind HAProxy, two replicas of each HTTP service
behind HAProxy on PRODUCT_SERVICE_PORT / ORDER_SERVICE_PORT, and the order consumers (two per
broker) as processes of their own. Everything else listens above 13300, keeps its state in
`<stack dir>/cluster/` and has its own Erlang cookie, epmd and signing key, so the cluster
runs beside `make up`'s stack without touching it. See docs/cluster.md.

For fault tests and the soak: `leader_of_partition`, `quorum_queue_leader`, `galera_writer`
find the node to hit, `kill` SIGKILLs any part by name and `revive` brings it back into the
cluster; `part_pids` names every part's process, `restart_processes` starts the services
again with other settings.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from . import haproxy, jaeger, kafka, mariadb, prometheus, rabbitmq
from .common import (
    HOST,
    Daemon,
    Launch,
    StackError,
    answers,
    apt_install,
    describe,
    ensure_started,
    ensure_stopped,
    find_program,
    port_open,
    repo_root,
    run,
    say,
    who_listens,
)
from .layout import (
    EPMD_PORT,
    MYSQL_FRONT,
    NODES,
    READY_TIMEOUT,
    SST_USER,
    STATS_PORT,
    Process,
    cluster_settings,
    directory,
    fronts,
    galera_nodes,
    kafka_nodes,
    processes,
    rabbitmq_nodes,
)
from .settings import StackSettings

# --- processes of the services ---------------------------------------------------------------


def _process_daemon(process: Process, base: Path) -> Daemon:
    log = base / "services" / f"{process.name}.log"
    return Daemon(
        name=process.name,
        ports=(process.port,),
        directory=base / "services",
        log=log,
        console=log,
        ready_timeout=READY_TIMEOUT,
    )


def _healthy(port: int) -> bool:
    return answers(f"http://{HOST}:{port}/healthz")


def _stop_process(process: Process, base: Path) -> None:
    ensure_stopped(_process_daemon(process, base))


def _start_process(process: Process, base: Path) -> None:
    launch = Launch(argv=process.argv, env={**os.environ, **process.env}, cwd=repo_root())
    ensure_started(
        _process_daemon(process, base), prepare=lambda: launch, ready=lambda: _healthy(process.port)
    )


def _start_processes(procs: Sequence[Process], base: Path) -> None:
    """Start them together, then wait until HAProxy routes to each."""
    _parallel([partial(_start_process, p, base) for p in procs])
    for process in procs:
        _wait_in_rotation(process.name)


# --- secrets of the cluster ---------------------------------------------------------------------


def _sst_password(base: Path) -> str:
    """The Galera SST account's password: made once, kept in a file only we may read."""
    path = base / "galera.sst"
    if not path.is_file():
        base.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _cookie(base: Path) -> None:
    """The three RabbitMQ nodes' own Erlang cookie (not the single node's)."""
    home = base / "rabbitmq-home"
    home.mkdir(parents=True, exist_ok=True)
    cookie = home / ".erlang.cookie"
    if not cookie.is_file():
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)


# --- bringing the engines up ----------------------------------------------------------------


def install_prerequisites() -> None:
    """Everything `make up` needs, plus Galera, mariabackup, socat and HAProxy."""
    missing = [
        *mariadb.missing_packages(),
        *mariadb.missing_galera_packages(),
        *rabbitmq.missing_packages(),
        *kafka.missing_packages(),
        *haproxy.missing_packages(),
    ]
    apt_install(sorted(set(missing)))
    kafka.install_jars()


def _grastate(node: mariadb.MariaNode) -> tuple[bool, int]:
    """(safe_to_bootstrap, seqno) from the node's grastate.dat; (False, -1) without one."""
    try:
        text = (node.directory / "data" / "grastate.dat").read_text()
    except OSError:
        return False, -1
    fields = {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in text.splitlines())
    }
    try:
        seqno = int(fields.get("seqno", "-1"))
    except ValueError:
        seqno = -1
    return fields.get("safe_to_bootstrap") == "1", seqno


def _bootstrap_node(nodes: Sequence[mariadb.MariaNode]) -> mariadb.MariaNode:
    """The node to start a new primary component from: the one Galera marked safe (the last
    to stop cleanly), else the most advanced one, else (a fresh cluster) the first."""
    states = [(_grastate(node), node) for node in nodes]
    for (safe, _), node in states:
        if safe:
            return node
    (_, seqno), best = max(states, key=lambda state: state[0][1])
    if seqno < 0:
        return nodes[0]
    grastate = best.directory / "data" / "grastate.dat"
    say(f"no Galera node stopped last cleanly; bootstrapping {best.name} (seqno {seqno})")
    grastate.write_text(
        grastate.read_text().replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1")
    )
    return best


def _client_over_tcp(port: int, sql: str) -> str:
    program = find_program("mariadb")
    if program is None:
        raise StackError("mariadb client not found")
    argv = [program, "--no-defaults", f"--host={HOST}", f"--port={port}",
            f"--user={haproxy.CHECK_USER}", "--batch", "--skip-column-names",
            "--connect-timeout=3", f"--execute={sql}"]  # fmt: skip
    return run(argv, timeout=10).stdout.strip()


def _galera_accounts(settings: StackSettings, node: mariadb.MariaNode, sst_password: str) -> None:
    """The SST and HAProxy check accounts, and the services' accounts (Galera replicates them)."""
    sql = f"""
CREATE USER IF NOT EXISTS '{SST_USER}'@'localhost' IDENTIFIED BY '{sst_password}';
ALTER USER '{SST_USER}'@'localhost' IDENTIFIED BY '{sst_password}';
GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO '{SST_USER}'@'localhost';
CREATE USER IF NOT EXISTS '{haproxy.CHECK_USER}'@'127.0.0.1';
"""
    mariadb._client(sql, socket=node.socket)
    mariadb.provision(settings, node)


def _start_galera(settings: StackSettings, base: Path) -> None:
    password = _sst_password(base)
    nodes = galera_nodes(base, password)
    running = [node for node in nodes if mariadb.node_ready(node)]
    if not running:
        first = _bootstrap_node(nodes)
        say(f"bootstrapping the Galera cluster from {first.name}")
        mariadb.start_node(first, bootstrap=True)
        running = [first]
    _galera_accounts(settings, running[0], password)
    for node in nodes:  # one joiner at a time: each takes a full copy from a donor (SST)
        if node not in running:
            mariadb.start_node(node)


def _start_rabbitmq(settings: StackSettings, base: Path) -> None:
    _cookie(base)
    nodes = rabbitmq_nodes(base)
    # All at once: a node that was clustered waits at boot for the others it knew.
    _parallel([partial(rabbitmq.start_node, node) for node in nodes])
    first = nodes[0]
    members = rabbitmq.ctl(first, "cluster_status", "--formatter", "json")
    for node in nodes[1:]:
        if node.nodename in members:
            continue
        say(f"joining {node.name} to {first.nodename}")
        rabbitmq.ctl(node, "stop_app")
        rabbitmq.ctl(node, "reset")
        rabbitmq.ctl(node, "join_cluster", first.nodename)
        rabbitmq.ctl(node, "start_app")
    # Users, permissions and the topology are the cluster's (every node has them): made once,
    # through the first node's management API, once all three are members.
    rabbitmq.provision(settings, first)


def _start_kafka(settings: StackSettings, base: Path) -> None:
    # All at once: no node is ready before a majority of the controllers runs.
    _parallel([partial(kafka.start_node, node) for node in kafka_nodes(base)])
    # The services' SCRAM credentials and ACLs, through the cluster's brokers (as the admin,
    # whose credential every node's storage was formatted with), as `make up` does.
    kafka.provision_brokers(settings.kafka)


def _parallel(jobs: Sequence[Callable[[], None]]) -> None:
    """Run the jobs in threads; raise the first failure after all have finished."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
    errors = [str(f.exception()) for f in futures if f.exception() is not None]
    if errors:
        raise StackError("\n".join(errors))


def _refuse_taken_fronts(settings: StackSettings, base: Path) -> None:
    if haproxy.daemon(base / "haproxy", fronts(settings, base)).pid() is not None:
        return
    for setting, port in (
        ("PRODUCT_SERVICE_PORT", settings.http.product_port),
        ("ORDER_SERVICE_PORT", settings.http.order_port),
    ):
        if port_open(port):
            raise StackError(
                f"the cluster's front {setting}={port} is taken by {who_listens(port)} "
                "(`make up`'s services?); stop them, or choose other fronts, e.g. "
                "PRODUCT_SERVICE_PORT=18080 ORDER_SERVICE_PORT=18081 make cluster"
            )


def up(
    settings: StackSettings, *, with_prometheus: bool = False, with_tracing: bool = False
) -> None:
    """Install what is missing, start every node, HAProxy, migrate, then the services (and,
    `with_prometheus`, Prometheus scraping every replica and consumer process; `with_tracing`,
    Jaeger first and every process sending its traces to it)."""
    from shop.access.dev_issuer import ensure_dev_key
    from shop.storage.migrations import migrate

    began = time.monotonic()
    base = directory()
    _refuse_taken_fronts(settings, base)
    install_prerequisites()
    shop = cluster_settings(settings, base)
    _parallel(
        [
            lambda: _start_galera(shop, base),
            lambda: _start_rabbitmq(shop, base),
            lambda: _start_kafka(shop, base),
        ]
    )
    program = find_program("mariadb")
    assert program is not None  # installed above
    haproxy.start(base / "haproxy", fronts(settings, base), mariadb_client=program)
    _wait(lambda: galera_writer() is not None, "HAProxy to route MariaDB to a Synced node", 30)
    say(f"engines up in {time.monotonic() - began:.1f}s; migrating through HAProxy")
    migrate(shop)
    _ensure_topics(shop)
    if ensure_dev_key(shop):
        say(f"created the cluster's signing key in {shop.auth.signing_key_file}")
    if with_tracing:
        jaeger.start(settings, directory=base / "jaeger")
    _start_processes(processes(settings, base, tracing=with_tracing), base)
    if with_prometheus:
        prometheus.start(
            settings, jobs=prometheus_jobs(settings, base), directory=base / "prometheus"
        )
    say(
        f"cluster up in {time.monotonic() - began:.1f}s: products on "
        f"http://{HOST}:{settings.http.product_port}, orders on "
        f"http://{HOST}:{settings.http.order_port}"
    )


def prometheus_jobs(settings: StackSettings, base: Path) -> prometheus.Jobs:
    """Every process's own /metrics: the product replicas as shop-products; the order replicas
    and the consumer processes (their health port) as shop-orders."""
    jobs: prometheus.Jobs = {"shop-products": [], "shop-orders": []}
    for process in processes(settings, base):
        jobs["shop-products" if process.name.startswith("products") else "shop-orders"].append(
            process.port
        )
    return jobs


def _ensure_topics(shop: StackSettings) -> None:
    import asyncio

    from shop.messaging.kafka import ensure_topics

    topics = [
        shop.kafka.topic,
        shop.kafka.dlq_topic,
        shop.kafka.product_events_topic,
        shop.kafka.order_events_topic,
    ]
    admin = kafka.as_admin(shop)  # no service may create every topic
    asyncio.run(ensure_topics(admin, topics, replication_factor=NODES, timeout=30.0))


def _wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    next_beat = time.monotonic() + 5
    while not condition():
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
        if time.monotonic() > next_beat:
            say(f"waiting for {what}")
            next_beat = time.monotonic() + 5
        time.sleep(0.5)


def down(settings: StackSettings) -> None:
    """Stop Prometheus, the services, HAProxy, Jaeger, then the nodes (Galera's first node
    last, so it is the one marked safe to bootstrap from next time)."""
    base = directory()
    errors: list[str] = []

    def attempt(job: Callable[[], None]) -> None:
        try:
            job()
        except StackError as exc:  # keep stopping the rest; report everything at the end
            errors.append(str(exc))

    attempt(lambda: prometheus.stop(settings, base / "prometheus"))
    procs = processes(settings, base)
    attempt(partial(_parallel, [partial(_stop_process, p, base) for p in procs]))
    attempt(lambda: haproxy.stop(base / "haproxy", fronts(settings, base)))
    attempt(lambda: jaeger.stop(settings, base / "jaeger"))
    attempt(partial(_parallel, [partial(kafka.stop_node, n) for n in kafka_nodes(base)]))
    for node in reversed(rabbitmq_nodes(base)):
        attempt(partial(rabbitmq.stop_node, node))
    attempt(lambda: rabbitmq.stop_epmd(base / "rabbitmq-home", EPMD_PORT))
    for galera in reversed(galera_nodes(base)):
        attempt(partial(mariadb.stop_node, galera))
    if errors:
        raise StackError("\n".join(errors))


# --- status and the fault-test API --------------------------------------------------------


def _parts(settings: StackSettings, base: Path) -> dict[str, tuple[Daemon, Callable[[], bool]]]:
    """Every part of the cluster by name: its daemon and its readiness check."""
    parts: dict[str, tuple[Daemon, Callable[[], bool]]] = {}
    for g in galera_nodes(base):
        parts[g.name] = (mariadb.node_daemon(g), partial(mariadb.node_ready, g))
    for r in rabbitmq_nodes(base):
        parts[r.name] = (rabbitmq.node_daemon(r), partial(rabbitmq.node_ready, r))
    for k in kafka_nodes(base):
        parts[k.name] = (kafka.node_daemon(k), partial(kafka.node_ready, k))
    f = fronts(settings, base)
    parts["haproxy"] = (haproxy.daemon(base / "haproxy", f), lambda: haproxy.ready(f))
    for p in processes(settings, base):
        parts[p.name] = (_process_daemon(p, base), partial(_healthy, p.port))
    return parts


def status(settings: StackSettings) -> list[tuple[str, str]]:
    """(name, state) for every node, HAProxy and each of its servers, and every process."""
    base = directory()
    rows = [(name, describe(d, ready)) for name, (d, ready) in _parts(settings, base).items()]
    if prometheus.daemon(settings, base / "prometheus").pid() is not None:  # when asked for
        rows.append(("prometheus", prometheus.status(settings, base / "prometheus")))
    if _tracing(settings, base):
        rows.append(("jaeger", jaeger.status(settings, base / "jaeger")))
    for g in galera_nodes(base):
        wsrep = mariadb.wsrep_status(g)
        if wsrep:
            rows.append(
                (f"  {g.name}", f"wsrep {wsrep.get('wsrep_local_state_comment', '?')}, cluster "
                 f"size {wsrep.get('wsrep_cluster_size', '?')}, "
                 f"{wsrep.get('wsrep_cluster_status', '?')}")
            )  # fmt: skip
    writer = galera_writer()
    for (front, server), state in sorted(haproxy.servers(STATS_PORT).items()):
        mark = " <- writes" if front == "mysql" and server == writer else ""
        rows.append((f"  {front}/{server}", f"haproxy: {state}{mark}"))
    return rows


def part_pids(settings: StackSettings) -> dict[str, int | None]:
    """Every part's process-group leader by name (None for a part that does not run)."""
    return {name: daemon.pid() for name, (daemon, _) in _parts(settings, directory()).items()}


def restart_processes(settings: StackSettings) -> None:
    """Restart every replica and consumer process with `settings` (the soak's purge horizons,
    then the cluster's own again): stopped and started together, then back in rotation."""
    base = directory()
    procs = processes(settings, base, tracing=_tracing(settings, base))
    _parallel([partial(_stop_process, p, base) for p in procs])
    _start_processes(procs, base)


def kill(settings: StackSettings, name: str) -> int:
    """SIGKILL one part of the cluster (`galera-2`, `kafka-1`, `rabbitmq-3`, `orders-1`, ...)
    and its whole process group; returns the pid it killed."""
    parts = _parts(settings, directory())
    if name not in parts:
        raise StackError(f"no cluster part {name!r}; expected one of {', '.join(parts)}")
    daemon = parts[name][0]
    pid = daemon.pid()
    if pid is None:
        raise StackError(f"{name} does not run")
    say(f"killing {name} (pid {pid}) with SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return pid


def revive(settings: StackSettings, name: str) -> None:
    """Start a part again (a killed node rejoins its cluster) and wait until it is ready."""
    base = directory()
    if name.startswith("galera-"):
        node = {g.name: g for g in galera_nodes(base, _sst_password(base))}[name]
        mariadb.start_node(node)  # joins the running cluster (IST or SST)
    elif name.startswith("rabbitmq-"):
        rabbitmq.start_node({r.name: r for r in rabbitmq_nodes(base)}[name])
    elif name.startswith("kafka-"):
        kafka.start_node({k.name: k for k in kafka_nodes(base)}[name])
    elif name == "haproxy":
        program = find_program("mariadb")
        assert program is not None
        haproxy.start(base / "haproxy", fronts(settings, base), mariadb_client=program)
    else:  # a replica or consumer: traced as the others are while the cluster's Jaeger runs
        procs = {p.name: p for p in processes(settings, base, tracing=_tracing(settings, base))}
        if name not in procs:
            raise StackError(f"no cluster part {name!r}")
        _start_process(procs[name], base)
    _wait_in_rotation(name)


def _tracing(settings: StackSettings, base: Path) -> bool:
    """Whether the cluster runs its Jaeger (`up(with_tracing=True)`)."""
    return jaeger.daemon(settings, base / "jaeger").pid() is not None


def _wait_in_rotation(name: str) -> None:
    """Until HAProxy sends traffic to `name` again (its checks passed `rise` times): a part
    that answers is not yet one HAProxy routes to. Parts HAProxy does not front pass at once."""

    def in_rotation() -> bool:
        states = [s for (_, server), s in haproxy.servers(STATS_PORT).items() if server == name]
        return all(state.startswith("UP") for state in states)

    _wait(in_rotation, f"HAProxy to route to {name}", READY_TIMEOUT)


def galera_writer() -> str | None:
    """The Galera node HAProxy sends writes to now (None if it routes to none)."""
    try:
        name = _client_over_tcp(MYSQL_FRONT, "SELECT @@wsrep_node_name")
    except StackError:
        return None
    return name or None


def leader_of_partition(settings: StackSettings, topic: str, partition: int = 0) -> str:
    """The Kafka node (`kafka-N`) leading one partition of a topic."""
    shop = cluster_settings(settings, directory())
    metadata = kafka.admin_client(kafka.as_admin(shop)).list_topics(topic, timeout=10)
    leader: int = metadata.topics[topic].partitions[partition].leader
    if leader < 0:
        raise StackError(f"{topic}[{partition}] has no leader now")
    return f"kafka-{leader}"


def quorum_queue_leader(settings: StackSettings, queue: str | None = None) -> str:
    """The RabbitMQ node (`rabbitmq-N`) leading a quorum queue (the order queue by default)."""
    import base64
    import json
    import urllib.parse

    shop = cluster_settings(settings, directory())
    vhost = urllib.parse.quote(shop.rabbitmq.vhost, safe="")
    name = urllib.parse.quote(queue or shop.rabbitmq.queue, safe="")
    credentials = f"{shop.stack.admin_user}:{shop.stack.admin_password}".encode()
    auth = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    for node in rabbitmq_nodes(directory()):  # any live node's management API answers
        url = f"http://{HOST}:{node.management_port}/api/queues/{vhost}/{name}"
        try:
            request = urllib.request.Request(url, headers=auth)
            with urllib.request.urlopen(request, timeout=3) as response:  # noqa: S310 - loopback
                body: dict[str, Any] = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            continue
        leader = str(body.get("leader") or body.get("node") or "")
        for candidate in rabbitmq_nodes(directory()):
            if candidate.nodename == leader:
                return candidate.name
    raise StackError(f"no RabbitMQ node names a leader of queue {queue or shop.rabbitmq.queue}")


def env_lines(settings: StackSettings) -> list[str]:
    """`export` lines that point `shop` (token, migrate) and the tests at the cluster."""
    shop = cluster_settings(settings, directory())
    names = (
        "db_port",
        "kafka_brokers",
        "kafka_replication_factor",
        "rabbitmq_port",
        "rabbitmq_management_port",
        "rabbitmq_queue_type",
        "auth_public_key_file",
        "auth_signing_key_file",
        "product_service_port",
        "order_service_port",
    )
    leaves = shop.flat()  # the settings are a tree; their flat names are the variables'
    return [f"export {name.upper()}={leaves[name]}" for name in names]
