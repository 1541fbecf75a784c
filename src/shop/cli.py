"""The `shop` command: serve, migrate, run, and the local stack."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from shop.settings import ConfigError, Settings, load_settings

SERVICES = ("products", "orders")


def _serve(settings: Settings, service: str) -> None:
    import uvicorn

    from shop import logs

    logs.configure(settings.log_level)
    port = settings.product_service_port if service == "products" else settings.order_service_port
    metrics_dir = None
    if settings.workers > 1:
        # Workers are separate processes: Prometheus' multiprocess mode sums their counters.
        # The variable must be set before any worker imports prometheus_client.
        metrics_dir = tempfile.mkdtemp(prefix=f"shop-metrics-{service}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _run_uvicorn(uvicorn, settings, service, port)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_uvicorn(uvicorn: Any, settings: Settings, service: str, port: int) -> None:
    uvicorn.run(
        f"shop.app:{service}_app",
        factory=True,
        host=settings.bind_host,
        port=port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=8,
    )


def _run_foreground(settings: Settings) -> int:
    """Both services as child processes in the foreground; Ctrl-C stops both."""
    from shop import stack

    for name in SERVICES:  # `make up` may have started them in the background
        stack.stop(name, settings)
    children = [
        subprocess.Popen([sys.executable, "-m", "shop", "serve", name]) for name in SERVICES
    ]
    print(
        f"products on http://127.0.0.1:{settings.product_service_port}, "
        f"orders on http://127.0.0.1:{settings.order_service_port} (Ctrl-C stops both)",
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


def _stack(settings: Settings, args: argparse.Namespace) -> int:
    from shop import stack
    from shop.migrate import migrate

    match args.action:
        case "up":
            stack.up_servers(settings)
            print("migrating", settings.db_name, flush=True)
            migrate(settings)
            if not args.no_services:
                stack.start_services(settings)
        case "down":
            stack.down(settings)
        case "status":
            for name, state in stack.status(settings):
                print(f"{name:10} {state}")
        case "start":
            stack.start(args.name, settings)
        case "stop":
            stack.stop(args.name, settings)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one HTTP service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    consume = sub.add_parser("consume", help="run one order consumer without HTTP (scale-out)")
    consume.add_argument("channel", choices=("kafka", "rabbitmq"))
    sub.add_parser("migrate", help="create the database if needed and migrate it to head")
    sub.add_parser("run", help="run both services in the foreground (the stack must be up)")
    st = sub.add_parser("stack", help="the local MariaDB, RabbitMQ and Kafka (and services)")
    st_sub = st.add_subparsers(dest="action", required=True)
    up = st_sub.add_parser("up", help="install, start and migrate; then start both services")
    up.add_argument("--no-services", action="store_true", help="servers and migrations only")
    st_sub.add_parser("down", help="stop everything the stack started")
    st_sub.add_parser("status", help="say what runs")
    names = ("mariadb", "rabbitmq", "kafka", *SERVICES)
    st_sub.add_parser("start", help="start one part").add_argument("name", choices=names)
    st_sub.add_parser("stop", help="stop one part").add_argument("name", choices=names)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.exit(f"shop: {exc}")
    if args.command == "serve":
        _serve(settings, args.service)
        return
    if args.command == "consume":
        import uvloop

        from shop import app

        uvloop.run(app.consume(settings, args.channel))
        return
    if args.command == "migrate":
        from shop.migrate import migrate

        migrate(settings)
        return
    if args.command == "run":
        sys.exit(_run_foreground(settings))
    from shop.stack import StackError

    try:
        sys.exit(_stack(settings, args))
    except StackError as exc:
        sys.exit(f"shop stack: {exc}")


if __name__ == "__main__":
    main()
