"""The `devstack` command: the local MariaDB, RabbitMQ and Kafka, and both services."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from shop.settings import ConfigError

from . import (
    SERVERS,
    SERVICES,
    TOOLS,
    StackError,
    down,
    identities,
    jaeger,
    start,
    start_services,
    status,
    stop,
    up_servers,
)
from .identities import ensure as ensure_identities
from .settings import StackSettings, load_stack_settings


def _up(
    settings: StackSettings, *, services: bool, tools: tuple[str, ...] = (), tracing: bool = False
) -> None:
    from shop.access.dev_issuer import ensure_dev_key
    from shop.storage.migrations import migrate

    up_servers(settings)
    print("migrating", settings.db.name, flush=True)
    migrate(settings)
    if ensure_dev_key(settings):  # the development issuer's key, which the services trust
        print("created the development signing key in", settings.auth.signing_key_file)
    if services:
        start_services(settings, tracing=tracing)
    elif tracing:
        start("jaeger", settings)
    for name in tools:
        start(name, settings)


def _run_foreground(settings: StackSettings, *, tracing: bool = False) -> int:
    """Both services as child processes in the foreground; Ctrl-C stops both. With `tracing`,
    they send every trace to the stack's Jaeger (`devstack up --tracing` starts it)."""
    for name in SERVICES:  # `make up` may have started them in the background
        stop(name, settings)
    traces = jaeger.service_env(settings) if tracing else {}
    children = [  # each with its own accounts, as `devstack up` starts them
        subprocess.Popen(
            [sys.executable, "-m", "shop", "serve", name],
            env={**os.environ, **identities.service_env(name), **traces},
        )
        for name in identities.SERVICES
    ]
    print(
        f"products on http://127.0.0.1:{settings.http.product_port}, "
        f"orders on http://127.0.0.1:{settings.http.order_port} (Ctrl-C stops both)",
        flush=True,
    )

    def _forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGTERM, _forward)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    _forward(signal.SIGTERM, None)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return max(abs(int(child.returncode or 0)) for child in children)


def _dispatch(settings: StackSettings, args: argparse.Namespace) -> int:
    match args.action:
        case "up":
            tools = ("prometheus",) if args.prometheus else ()
            _up(settings, services=not args.no_services, tools=tools, tracing=args.tracing)
        case "down":
            down(settings)
        case "status":
            for name, state in status(settings):
                print(f"{name:10} {state}")
        case "start":
            start(args.name, settings)
        case "stop":
            stop(args.name, settings)
        case "run":
            return _run_foreground(settings, tracing=args.tracing)
        case "cluster":
            return _cluster(settings, args)
    return 0


def _cluster(settings: StackSettings, args: argparse.Namespace) -> int:
    from . import cluster

    match args.cluster_action:
        case "up":
            cluster.up(settings, with_prometheus=args.prometheus, with_tracing=args.tracing)
        case "down":
            cluster.down(settings)
        case "status":
            for name, state in cluster.status(settings):
                print(f"{name:26} {state}")
        case "env":
            print("\n".join(cluster.env_lines(settings)))
        case "kill":
            cluster.kill(settings, args.name)
        case "revive":
            cluster.revive(settings, args.name)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="install, start and migrate; then start both services")
    up.add_argument("--no-services", action="store_true", help="servers and migrations only")
    up.add_argument(
        "--prometheus", action="store_true", help="also Prometheus, scraping both services"
    )
    up.add_argument(
        "--tracing",
        action="store_true",
        help="also Jaeger, and both services sending every trace to it (OTLP)",
    )
    sub.add_parser("down", help="stop everything the stack started")
    sub.add_parser("status", help="say what runs")
    names = (*SERVERS, *SERVICES, *TOOLS)
    sub.add_parser("start", help="start one part").add_argument("name", choices=names)
    sub.add_parser("stop", help="stop one part").add_argument("name", choices=names)
    sub.add_parser(
        "run", help="run both services in the foreground (the servers must be up)"
    ).add_argument("--tracing", action="store_true", help="send every trace to the stack's Jaeger")
    cluster = sub.add_parser("cluster", help="the clustered system (docs/cluster.md)")
    actions = cluster.add_subparsers(dest="cluster_action", required=True)
    cluster_up = actions.add_parser(
        "up", help="install, start every node, HAProxy, migrate, the services"
    )
    cluster_up.add_argument(
        "--prometheus", action="store_true", help="also Prometheus, scraping every process"
    )
    cluster_up.add_argument(
        "--tracing",
        action="store_true",
        help="also Jaeger, and every process sending every trace to it (OTLP)",
    )
    actions.add_parser("down", help="stop everything `cluster up` started")
    actions.add_parser("status", help="every node, replica and HAProxy server, with health")
    actions.add_parser("env", help="export lines pointing `shop token` and tests at the cluster")
    actions.add_parser(
        "kill", help="SIGKILL one part (galera-1, kafka-2, orders-1, ...)"
    ).add_argument("name")
    actions.add_parser("revive", help="start a killed part again").add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.action in ("up", "start", "run", "cluster"):
        ensure_identities()  # before the settings, which take the accounts' passwords from it
    try:
        settings = load_stack_settings()
    except ConfigError as exc:
        sys.exit(f"devstack: {exc}")
    try:
        sys.exit(_dispatch(settings, args))
    except StackError as exc:
        sys.exit(f"devstack: {exc}")
