"""The local development stack: MariaDB, RabbitMQ and Kafka on 127.0.0.1, plus both services.

Everything (data, logs, pidfiles) lives in `<repo>/.stack` (or $SHOP_STACK_DIR). All calls are
synchronous and idempotent: starting something that runs, or stopping something stopped, is
a no-op. See docs/stack.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import kafka, mariadb, prometheus, rabbitmq, services
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
TOOLS = ("prometheus",)  # started on request (`devstack up --prometheus`), stopped by `down`

_START: dict[str, Callable[[StackSettings], None]] = {
    "mariadb": mariadb.start,
    "rabbitmq": rabbitmq.start,
    "kafka": kafka.start,
    "prometheus": prometheus.start,
}
_STOP: dict[str, Callable[[StackSettings], None]] = {
    "mariadb": mariadb.stop,
    "rabbitmq": rabbitmq.stop,
    "kafka": kafka.stop,
    "prometheus": prometheus.stop,
}
_STATUS: dict[str, Callable[[StackSettings], str]] = {
    "mariadb": mariadb.status,
    "rabbitmq": rabbitmq.status,
    "kafka": kafka.status,
    "prometheus": prometheus.status,
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


def start_services(settings: StackSettings) -> None:
    for name in SERVICES:
        start(name, settings)


def down(settings: StackSettings) -> None:
    """Stop Prometheus, the services, then the servers, then epmd: afterwards nothing of the
    stack runs."""
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
