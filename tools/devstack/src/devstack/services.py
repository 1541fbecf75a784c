"""The two HTTP services in the background, with the same pidfile/log handling as the servers."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from shop.settings import Settings

from .common import (
    HOST,
    Daemon,
    Launch,
    describe,
    ensure_started,
    ensure_stopped,
    repo_root,
    stack_dir,
)

READY_TIMEOUT = 60.0


def port(name: str, settings: Settings) -> int:
    return {"products": settings.product_service_port, "orders": settings.order_service_port}[name]


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


def _settings_env(settings: Settings) -> dict[str, str]:
    """The caller's settings as environment variables (they beat config.yaml), so the service
    runs with exactly the settings it was started with, overrides included."""
    return {field.upper(): str(value) for field, value in settings.model_dump().items()}


def ready(name: str, settings: Settings) -> bool:
    url = f"http://{HOST}:{port(name, settings)}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _prepare(name: str, settings: Settings) -> Launch:
    root: Path = repo_root()
    return Launch(
        argv=[sys.executable, "-m", "shop", "serve", name],
        env={**os.environ, **_settings_env(settings)},
        cwd=root,
    )


def start(name: str, settings: Settings) -> None:
    ensure_started(
        daemon(name, settings),
        prepare=lambda: _prepare(name, settings),
        ready=lambda: ready(name, settings),
    )


def stop(name: str, settings: Settings) -> None:
    ensure_stopped(daemon(name, settings))


def status(name: str, settings: Settings) -> str:
    return describe(daemon(name, settings), lambda: ready(name, settings))
