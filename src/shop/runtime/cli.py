"""The `shop` command: serve, consume, migrate. (The local stack is `devstack`, in tools/.)"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from shop.runtime.consumer_process import PARENT_ENV, Child, die_with_parent
from shop.settings import ConfigError, Settings, load_settings
from shop.storage.write_counter import WORKER_DIR_ENV


def _serve(settings: Settings, service: str) -> None:
    import uvicorn

    from shop.runtime import logs

    logs.configure(settings.log_level)
    http, orders = settings.http, settings.orders
    consumers = service == "orders" and orders.consumers_enabled and orders.consumer_process
    run_dir = None
    if http.workers > 1 or consumers:
        # Workers (and the consumers) are separate processes: Prometheus' multiprocess mode
        # sums their counters (the variable must be set before any of them imports
        # prometheus_client), and the workers share their cache counters (write_counter).
        run_dir = Path(tempfile.mkdtemp(prefix=f"shop-{service}-"))
        (run_dir / "metrics").mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run_dir / "metrics")
        os.environ[WORKER_DIR_ENV] = str(run_dir)
    child = None
    if consumers:
        argv = [sys.executable, "-m", "shop", "consume", "all", "--nice", str(orders.consumer_nice)]
        child = Child("order consumers", argv, stop_seconds=orders.consumer_stop_seconds)
        child.start()
        # The HTTP workers leave the consumers and the outbox relay to the child.
        os.environ["CONSUMERS_ENABLED"] = "false"
        os.environ["OUTBOX_RELAY_ENABLED"] = "false"
        _stop_child_on_exit_signals(child)
    # uvicorn's worker processes (WORKERS > 1) end with this one, even if it is killed: an
    # orphaned worker would go on answering, and keep the port, after its service died.
    os.environ[PARENT_ENV] = str(os.getpid())
    try:
        uvicorn.run(
            f"shop.runtime.{service}_service:{service}_app",
            factory=True,
            host=http.bind_host,
            port=http.product_port if service == "products" else http.order_port,
            workers=http.workers,
            loop="uvloop",
            http="shop.web.fastpath.protocol:RequestDeadline",
            # The client behind a proxy is found by shop.access.client_address (from
            # FORWARDED_ALLOW_IPS), the same way on the fast path and in the app.
            proxy_headers=False,
            access_log=False,
            log_config=None,
            limit_concurrency=http.max_connections,
            timeout_keep_alive=http.keep_alive_seconds,
            timeout_graceful_shutdown=http.graceful_shutdown_seconds,
        )
    finally:
        if child is not None:
            child.stop()
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)


def _stop_child_on_exit_signals(child: Child) -> None:
    """uvicorn, once shut down, restores the handlers it found and raises the signal again:
    these stop the consumers (they finish their batch) before the process ends as it would."""

    def stop_then_exit(signum: int, _frame: object) -> None:
        child.stop()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_then_exit)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one HTTP service in the foreground")
    serve.add_argument("service", choices=("products", "orders"))
    consume = sub.add_parser("consume", help="run order consumers without HTTP (scale-out)")
    consume.add_argument("channel", choices=("kafka", "rabbitmq", "all"))
    consume.add_argument(
        "--nice", type=int, default=0, help="lower this process's CPU priority by this much"
    )
    consume.add_argument(
        "--health-port",
        type=int,
        help="answer /healthz, /readyz and /metrics on this port (for an orchestrator's probes)",
    )
    sub.add_parser("migrate", help="create the database if needed and migrate it to head")
    token = sub.add_parser("token", help="print an access token from the development issuer")
    who = token.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="the customer's user id (the token's subject)")
    who.add_argument("--subject", help="a subject that is not a user (a service, an operator)")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope to grant (repeatable): products:write, orders:admin",
    )
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires")
    sub.add_parser("dev-key", help="create the development issuer's key pair if missing")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.exit(f"shop: {exc}")
    if args.command == "serve":
        _serve(settings, args.service)
    elif args.command == "consume":
        import uvloop

        from shop.runtime import orders_service

        die_with_parent()
        os.nice(args.nice)  # before any thread starts: threads inherit it
        channels = ("kafka", "rabbitmq") if args.channel == "all" else (args.channel,)
        uvloop.run(orders_service.consume(settings, channels, health_port=args.health_port))
    elif args.command in ("token", "dev-key"):
        from shop.access import dev_issuer as tokens

        created = tokens.ensure_dev_key(settings)
        if args.command == "dev-key":
            state = "created" if created else "kept"
            print(f"{state} {settings.auth.signing_key_file} and {settings.auth.public_key_file}")
        else:
            subject = str(args.user) if args.user is not None else args.subject
            ttl = args.ttl
            print(tokens.dev_token(settings, subject=subject, scopes=args.scope, ttl_seconds=ttl))
    elif args.command == "migrate":
        from shop.storage.migrations import migrate

        migrate(settings)
