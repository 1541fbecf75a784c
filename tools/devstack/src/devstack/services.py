"""The two HTTP services in the background, with the same pidfile/log handling as the servers."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from shop.settings import Settings, flat_names

from . import identities
from .common import (
    HOST,
    Daemon,
    Launch,
    answers,
    describe,
    ensure_started,
    ensure_stopped,
    repo_root,
    say,
    stack_dir,
)

READY_TIMEOUT = 60.0


def port(name: str, settings: Settings) -> int:
    return {"products": settings.http.product_port, "orders": settings.http.order_port}[name]


def daemon(name: str, settings: Settings) -> Daemon:
    directory = stack_dir() / "services"
    log = directory / f"{name}.log"
    return Daemon(
        name=name,
        ports=(port(name, settings),),
        directory=directory,
        log=log,
        console=log,
        ready_timeout=READY_TIMEOUT,
    )


# Credentials the services never use stay out of their environment (and the stack's own
# administrators are not in the services' settings at all).
NOT_FOR_SERVICES = frozenset({"db_migrate_user", "db_migrate_password"})


def _settings_env(settings: Settings, service: identities.Service | None = None) -> dict[str, str]:
    """The caller's settings as environment variables (they beat config.yaml), so the service
    runs with exactly the settings it was started with, overrides included; with `service`,
    its own identity on every server (`identities.service_env`) instead of the caller's."""
    services = set(flat_names(Settings)) - NOT_FOR_SERVICES
    if service is not None:
        services -= identities.names()
    env = {
        name.upper(): ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        for name, value in settings.flat().items()
        if name in services and value is not None  # unset optional settings stay unset
    }
    return env if service is None else env | identities.service_env(service)


def ready(name: str, settings: Settings) -> bool:
    return answers(f"http://{HOST}:{port(name, settings)}/healthz")


def _env(name: str, settings: Settings, tracing: Mapping[str, str]) -> dict[str, str]:
    """The service's settings and identity, then `tracing` (`jaeger.service_env`: where its
    spans go), which wins over any tracing setting of the caller's."""
    return {**_settings_env(settings, _service(name)), **tracing}


def _prepare(name: str, settings: Settings, tracing: Mapping[str, str]) -> Launch:
    root: Path = repo_root()
    return Launch(
        argv=[sys.executable, "-m", "shop", "serve", name],
        env={**os.environ, **_env(name, settings, tracing)},
        cwd=root,
    )


def _service(name: str) -> identities.Service:
    for service in identities.SERVICES:
        if service == name:
            return service
    raise ValueError(f"unknown service {name!r}")


def fingerprint(name: str, settings: Settings, tracing: Mapping[str, str] | None = None) -> str:
    """What a running service was started from: its source files, its settings and where its
    traces go."""
    digest = hashlib.sha256()
    for path in sorted((repo_root() / "src" / "shop").rglob("*.py")):
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    for field, value in sorted(_env(name, settings, tracing or {}).items()):
        digest.update(f"{field}={value}\0".encode())
    return digest.hexdigest()


def start(name: str, settings: Settings, *, tracing: Mapping[str, str] | None = None) -> None:
    """Start the service unless it runs, with `tracing` (`jaeger.service_env`) in its
    environment if given; one started from other code or settings (an edit since, `WORKERS=2
    make up`, tracing switched on or off) is restarted, so what answers is what was asked."""
    service = daemon(name, settings)
    marker = service.directory / f"{name}.fingerprint"
    wanted = fingerprint(name, settings, tracing)
    if service.pid() is not None and marker.exists() and marker.read_text() != wanted:
        say(f"{name}: code or settings changed since it started; restarting it")
        ensure_stopped(service)
    if ensure_started(
        service,
        prepare=lambda: _prepare(name, settings, tracing or {}),
        ready=lambda: ready(name, settings),
    ):
        marker.write_text(wanted)


def stop(name: str, settings: Settings) -> None:
    ensure_stopped(daemon(name, settings))


def status(name: str, settings: Settings) -> str:
    return describe(daemon(name, settings), lambda: ready(name, settings))
