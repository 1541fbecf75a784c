"""HAProxy (Debian's) in front of the cluster: MariaDB, AMQP and both HTTP services.

- MariaDB: one node takes every write, the others are backups. A node is healthy only when
  Galera says it is Synced (an external check asks it `wsrep_local_state`), so a donor, a
  joiner or a node cut off from the primary component gets no traffic. When the writer goes
  down its sessions are cut and new connections go to the first healthy backup; when it comes
  back, the backups' sessions are cut so that writes go through one node again.
- AMQP: every RabbitMQ node, least connections; a dead node's sessions are cut so clients
  reconnect (to a live node) at once.
- HTTP: two replicas per service, checked on /healthz; a request that could not reach a
  replica is sent to the other (`retry-on conn-failure`; never a request a replica received).
"""

from __future__ import annotations

import csv
import io
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import (
    HOST,
    Daemon,
    Launch,
    StackError,
    describe,
    ensure_started,
    ensure_stopped,
    find_program,
    port_open,
)

NAME = "haproxy"
PACKAGES = ("haproxy",)
READY_TIMEOUT = 20.0
CHECK_USER = "haproxy_check"  # no password, no rights: enough for SHOW GLOBAL STATUS


@dataclass(frozen=True)
class Backend:
    """One server behind a front: its name (also devstack's name for it) and port."""

    name: str
    port: int


@dataclass(frozen=True)
class Fronts:
    """Every front HAProxy serves, with the servers behind each."""

    mysql_port: int
    galera: Sequence[Backend]
    amqp_port: int
    rabbitmq: Sequence[Backend]
    http: Sequence[tuple[str, int, Sequence[Backend]]]  # (service, port, replicas)
    stats_port: int


def missing_packages() -> list[str]:
    return [] if find_program("haproxy") else list(PACKAGES)


def daemon(directory: Path, fronts: Fronts) -> Daemon:
    ports: tuple[int, ...] = (fronts.stats_port, fronts.mysql_port, fronts.amqp_port)
    ports += tuple(port for _, port, _ in fronts.http)
    return Daemon(
        name=NAME,
        ports=ports,
        directory=directory,
        log=directory / "haproxy.log",
        console=directory / "haproxy.log",
        ready_timeout=READY_TIMEOUT,
    )


def galera_check_script(mariadb_client: str) -> str:
    """HAProxy's external check: $3 and $4 are the server's address and port."""
    return f"""#!/bin/sh
# Written by devstack: a Galera node takes traffic only while it is Synced (state 4).
state=$({mariadb_client} --no-defaults --host="$3" --port="$4" --user={CHECK_USER} \\
  --connect-timeout=2 --batch --skip-column-names \\
  --execute="SHOW GLOBAL STATUS LIKE 'wsrep_local_state'" 2>/dev/null | cut -f2)
[ "$state" = "4" ]
"""


def config(fronts: Fronts, *, check_script: Path) -> str:
    """haproxy.cfg for these fronts (pure: the unit tests read it)."""
    lines = [
        "# Written by devstack on every start; edit devstack/haproxy.py instead.",
        "global",
        "    log stdout format raw local0 notice",
        "    maxconn 4096",  # per front and in all; 2 fds each must fit the fd limit
        "    external-check",
        "    insecure-fork-wanted",
        "",
        "defaults",
        "    log global",
        "    timeout connect 2s",
        "    timeout check 3s",
        "    default-server inter 1s fall 2 rise 2",
        "",
        "listen stats",
        f"    bind {HOST}:{fronts.stats_port}",
        "    mode http",
        "    timeout client 10s",
        "    timeout server 10s",
        "    stats enable",
        "    stats uri /",
        "",
        "listen mysql",
        f"    bind {HOST}:{fronts.mysql_port}",
        "    mode tcp",
        "    timeout client 1h",
        "    timeout server 1h",
        "    option external-check",
        '    external-check path "/usr/bin:/bin:/usr/sbin:/sbin"',
        f"    external-check command {check_script}",
    ]
    for index, node in enumerate(fronts.galera):
        if index == 0:
            role = "on-marked-down shutdown-sessions on-marked-up shutdown-backup-sessions"
        else:
            role = "backup on-marked-down shutdown-sessions"
        lines.append(f"    server {node.name} {HOST}:{node.port} check {role}")
    lines += [
        "",
        "listen amqp",
        f"    bind {HOST}:{fronts.amqp_port}",
        "    mode tcp",
        "    balance leastconn",
        "    timeout client 3h",
        "    timeout server 3h",
        # A client reconnecting right after a node died would be sent to it until the checks
        # mark it down (about 2 s): a refused connection is tried on another node instead.
        "    retries 3",
        "    option redispatch 1",
    ]
    for node in fronts.rabbitmq:
        lines.append(
            f"    server {node.name} {HOST}:{node.port} check on-marked-down shutdown-sessions"
        )
    for service, port, replicas in fronts.http:
        lines += [
            "",
            f"listen {service}",
            f"    bind {HOST}:{port}",
            "    mode http",
            "    balance roundrobin",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout http-keep-alive 5s",
            "    option httpchk GET /healthz",
            "    http-check expect status 200",
            "    retries 3",
            "    option redispatch 1",
            "    retry-on conn-failure",
        ]
        for replica in replicas:
            lines.append(f"    server {replica.name} {HOST}:{replica.port} check")
    return "\n".join(lines) + "\n"


def _program() -> str:
    found = find_program("haproxy")
    if found is None:
        raise StackError("haproxy not found; install the Debian package haproxy")
    return found


def _stats_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/;csv", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def ready(fronts: Fronts) -> bool:
    return port_open(fronts.mysql_port) and _stats_answer(fronts.stats_port)


def start(directory: Path, fronts: Fronts, *, mariadb_client: str) -> None:
    def prepare() -> Launch:
        directory.mkdir(parents=True, exist_ok=True)
        script = directory / "galera-check.sh"
        script.write_text(galera_check_script(mariadb_client))
        script.chmod(0o755)
        cfg = directory / "haproxy.cfg"
        cfg.write_text(config(fronts, check_script=script))
        check = _run_check(cfg)
        if check:
            raise StackError(f"haproxy refuses {cfg}:\n{check}")
        # -db: stay in the foreground (devstack keeps the pid and the process group).
        return Launch(argv=[_program(), "-db", "-f", str(cfg)], env=dict(os.environ), cwd=directory)

    ensure_started(daemon(directory, fronts), prepare=prepare, ready=lambda: ready(fronts))


def _run_check(cfg: Path) -> str:
    from .common import run

    done = run([_program(), "-c", "-q", "-f", str(cfg)], timeout=30, check=False)
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip()


def stop(directory: Path, fronts: Fronts) -> None:
    ensure_stopped(daemon(directory, fronts))


def status(directory: Path, fronts: Fronts) -> str:
    return describe(daemon(directory, fronts), lambda: ready(fronts))


def servers(stats_port: int) -> dict[tuple[str, str], str]:
    """{(front, server): "UP" | "DOWN" | ...} from HAProxy's stats; empty if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{stats_port}/;csv", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {
        (row["pxname"], row["svname"]): row["status"]
        + (" (backup)" if row.get("bck") == "1" else "")
        for row in rows
        if row["svname"] not in ("FRONTEND", "BACKEND")
    }
