"""The local development stack: MariaDB, RabbitMQ and Kafka on 127.0.0.1, plus both services.

Everything (data, logs, pidfiles) lives in `<repo>/.stack` (or $SHOP_STACK_DIR). All calls are
synchronous and idempotent: starting something that runs, or stopping something stopped, is
a no-op. See docs/stack.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import jaeger, kafka, mariadb, prometheus, rabbitmq, services
from .common import StackError, apt_install, say
from .settings import StackSettings

__all__ = [
    "SERVERS",
    "SERVICES",
    "TOOLS",
    "StackError",
    "down",
    "install_prerequisites",
    "start",
    "start_services",
    "status",
    "stop",
    "up_servers",
]

SERVERS = ("mariadb", "rabbitmq", "kafka")
SERVICES = ("products", "orders")
# Started on request (`devstack up --prometheus`, `--tracing`), stopped by `down`.
TOOLS = ("prometheus", "jaeger")

_START: dict[str, Callable[[StackSettings], None]] = {
    "mariadb": mariadb.start,
    "rabbitmq": rabbitmq.start,
    "kafka": kafka.start,
    "prometheus": prometheus.start,
    "jaeger": jaeger.start,
}
_STOP: dict[str, Callable[[StackSettings], None]] = {
    "mariadb": mariadb.stop,
    "rabbitmq": rabbitmq.stop,
    "kafka": kafka.stop,
    "prometheus": prometheus.stop,
    "jaeger": jaeger.stop,
}
_STATUS: dict[str, Callable[[StackSettings], str]] = {
    "mariadb": mariadb.status,
    "rabbitmq": rabbitmq.status,
    "kafka": kafka.status,
    "prometheus": prometheus.status,
    "jaeger": jaeger.status,
}


def _check_name(name: str) -> None:
    if name not in (*SERVERS, *SERVICES, *TOOLS):
        known = ", ".join((*SERVERS, *SERVICES, *TOOLS))
        raise StackError(f"unknown stack component {name!r}; expected one of {known}")


def install_prerequisites() -> None:
    """Debian packages (MariaDB, RabbitMQ, Java, Maven) and the Kafka jars; skips what exists."""
    missing = [
        *mariadb.missing_packages(),
        *rabbitmq.missing_packages(),
        *kafka.missing_packages(),
    ]
    apt_install(missing)
    kafka.install_jars()


def start(name: str, settings: StackSettings) -> None:
    """Start one server or service (and provision it) unless it already runs; wait until ready."""
    _check_name(name)
    if name in SERVICES:
        services.start(name, settings)
    else:
        _START[name](settings)


def stop(name: str, settings: StackSettings) -> None:
    """Stop one server or service: SIGTERM, up to 30 s grace, then SIGKILL."""
    _check_name(name)
    if name in SERVICES:
        services.stop(name, settings)
    else:
        _STOP[name](settings)


def up_servers(settings: StackSettings) -> None:
    """Install what is missing, then start and provision MariaDB, RabbitMQ and Kafka."""
    began = time.monotonic()
    install_prerequisites()
    for name in SERVERS:
        start(name, settings)
    say(f"servers up in {time.monotonic() - began:.1f}s")


def start_services(settings: StackSettings, *, tracing: bool = False) -> None:
    """Both services; with `tracing`, Jaeger first (unless it runs) and the services sending
    every trace to it (`jaeger.service_env`; the order service's consumer process inherits it).
    Without, a service started with tracing is restarted without."""
    if tracing:
        jaeger.start(settings)
    env = jaeger.service_env(settings) if tracing else None
    for name in SERVICES:
        services.start(name, settings, tracing=env)


def down(settings: StackSettings) -> None:
    """Stop Prometheus and Jaeger, the services, then the servers, then epmd: afterwards nothing
    of the stack runs."""
    errors: list[str] = []
    for name in (*TOOLS, *SERVICES, *reversed(SERVERS)):
        try:
            stop(name, settings)
        except StackError as exc:  # keep stopping the rest; report everything at the end
            errors.append(str(exc))
    rabbitmq.stop_stray_epmd()
    if errors:
        raise StackError("\n".join(errors))


def status(settings: StackSettings) -> list[tuple[str, str]]:
    """(name, "running pid 123 on 127.0.0.1:3306" | "stopped" | ...) for servers and services."""
    rows = [(name, _STATUS[name](settings)) for name in SERVERS]
    rows += [(name, services.status(name, settings)) for name in SERVICES]
    rows += [(name, _STATUS[name](settings)) for name in TOOLS]
    return rows
