"""Our own MariaDB instance (never the Debian system service): datadir, socket and logs in .stack.

Every server and client call passes --no-defaults so /etc/mysql/*.cnf (written for the system
service: other socket, other datadir) cannot leak in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from shop.settings import Settings

from .common import (
    HOST,
    Daemon,
    Launch,
    StackError,
    describe,
    ensure_started,
    ensure_stopped,
    find_program,
    run,
    say,
    stack_dir,
)

NAME = "mariadb"
PACKAGES = ("mariadb-server", "mariadb-client")
READY_TIMEOUT = 60.0
# sun_path in sockaddr_un is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def missing_packages() -> list[str]:
    if find_program("mariadbd") and find_program("mariadb-install-db") and find_program("mariadb"):
        return []
    return list(PACKAGES)


def _dir() -> Path:
    return stack_dir() / NAME


def _socket() -> Path:
    return _dir() / "mysqld.sock"


def daemon(settings: Settings) -> Daemon:
    directory = _dir()
    return Daemon(
        name=NAME,
        ports=(settings.db_port,),
        directory=directory,
        log=directory / "mariadb.log",
        console=directory / "console.log",
        ready_timeout=READY_TIMEOUT,
    )


def _program(name: str) -> str:
    found = find_program(name)
    if found is None:
        raise StackError(f"{name} not found; install the Debian packages {' '.join(PACKAGES)}")
    return found


def _client(sql: str, *, timeout: float = 30) -> str:
    """Run SQL as root over our socket (unix_socket auth: root needs no password there)."""
    argv = [
        _program("mariadb"),
        "--no-defaults",
        f"--socket={_socket()}",
        "--user=root",
        "--batch",
        "--skip-column-names",
        f"--connect-timeout={int(timeout)}",
    ]
    return run(argv, input_text=sql, timeout=timeout).stdout


def _init_datadir(data: Path) -> None:
    """Create the system tables once; done in a scratch dir so a failed run leaves nothing."""
    if (data / "mysql").is_dir():
        return
    scratch = data.with_name("data.initialising")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    say("initialising the MariaDB data directory (once)")
    argv = [
        _program("mariadb-install-db"),
        "--no-defaults",
        f"--datadir={scratch}",
        "--auth-root-authentication-method=socket",
        "--skip-test-db",
        "--skip-name-resolve",
    ]
    if os.geteuid() == 0:
        argv.append("--user=root")
    done = run(argv, timeout=180, check=False)
    (_dir() / "install-db.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise StackError(
            f"mariadb-install-db failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()[-3000:]}"
        )
    shutil.rmtree(data, ignore_errors=True)
    scratch.rename(data)


def _prepare(settings: Settings) -> Launch:
    directory = _dir()
    data = directory / "data"
    sock = _socket()
    if len(str(sock)) > _MAX_SOCKET_PATH:
        raise StackError(
            f"socket path {sock} is too long for a unix socket; "
            "set SHOP_STACK_DIR to a shorter path"
        )
    _init_datadir(data)
    sock.unlink(missing_ok=True)
    argv = [
        _program("mariadbd"),
        "--no-defaults",  # must be the first option
        f"--datadir={data}",
        f"--socket={sock}",
        f"--port={settings.db_port}",
        f"--bind-address={HOST}",
        f"--pid-file={directory / 'mariadbd.pid'}",
        f"--log-error={directory / 'mariadb.log'}",
        "--skip-name-resolve",
        "--max-connections=500",
        "--innodb-buffer-pool-size=256M",
        # The redo log is synced to disk at every commit (=1, as in production). The services
        # answer 201, commit Kafka offsets and ack RabbitMQ messages right after a commit; with
        # =2 a machine crash could lose the last second of such orders while the broker has
        # already forgotten them. Benchmarks must measure this cost, not hide it.
        "--innodb-flush-log-at-trx-commit=1",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_unicode_ci",
    ]
    if os.geteuid() == 0:
        argv.append("--user=root")
    return Launch(argv=argv, env=dict(os.environ), cwd=directory)


def ready(settings: Settings) -> bool:
    """The socket exists and a trivial query answers (TCP alone opens before InnoDB is ready)."""
    if not _socket().exists():
        return False
    try:
        return _client("SELECT 1;", timeout=5).strip() == "1"
    except StackError:
        return False


def _string(value: str) -> str:
    """A SQL string literal; the client runs with the default sql_mode (backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _db_pattern(db_name: str) -> str:
    """`shop%` for db_name=shop: the app DB and every `shop_*` DB (shop_test, ...).

    `_` is a wildcard in GRANT database names, so the literal part is escaped.
    """
    return "`" + db_name.replace("_", "\\_").replace("`", "``") + "%`"


# The services' account reads and writes rows; the migration account also shapes the schema
# (and creates and drops the test and bench databases).
SERVICE_RIGHTS = "SELECT, INSERT, UPDATE, DELETE"
MIGRATION_RIGHTS = "ALL PRIVILEGES"


def provision(settings: Settings) -> None:
    """Idempotently create the app database and both accounts, each with only its rights on
    `shop%`; re-applies the passwords and the rights every time (so widened rights narrow)."""
    pattern = _db_pattern(settings.db_name)
    database = "`" + settings.db_name.replace("`", "``") + "`"
    statements = [
        f"CREATE DATABASE IF NOT EXISTS {database} "
        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;",
    ]
    accounts = (
        (settings.db_user, settings.db_password, SERVICE_RIGHTS),
        (settings.db_migrate_user, settings.db_migrate_password, MIGRATION_RIGHTS),
    )
    for name, secret, rights in accounts:
        user, password = _string(name), _string(secret)
        for host in ("'127.0.0.1'", "'localhost'"):
            account = f"{user}@{host}"
            statements += [
                f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password};",
                f"ALTER USER {account} IDENTIFIED BY {password};",
                f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account};",
                f"GRANT {rights} ON {pattern}.* TO {account};",
            ]
    statements.append("FLUSH PRIVILEGES;")
    _client("\n".join(statements))


def start(settings: Settings) -> None:
    ensure_started(
        daemon(settings), prepare=lambda: _prepare(settings), ready=lambda: ready(settings)
    )
    provision(settings)


def stop(settings: Settings) -> None:
    ensure_stopped(daemon(settings))


def status(settings: Settings) -> str:
    return describe(daemon(settings), lambda: ready(settings))
