"""Our own MariaDB instance (never the Debian system service): datadir, socket and logs in .stack.

Every server and client call passes --no-defaults so /etc/mysql/*.cnf (written for the system
service: other socket, other datadir) cannot leak in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import identities
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
from .settings import StackSettings

NAME = "mariadb"
PACKAGES = ("mariadb-server", "mariadb-client")
READY_TIMEOUT = 60.0
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
# A Galera node also needs the provider, and mariabackup and socat for state transfers (SST).
GALERA_PACKAGES = ("galera-4", "mariadb-backup", "socat")
# sun_path in sockaddr_un is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def missing_packages() -> list[str]:
    if find_program("mariadbd") and find_program("mariadb-install-db") and find_program("mariadb"):
        return []
    return list(PACKAGES)


def missing_galera_packages() -> list[str]:
    have = Path(GALERA_PROVIDER).is_file() and find_program("mariabackup") and find_program("socat")
    return [] if have else list(GALERA_PACKAGES)


@dataclass(frozen=True)
class MariaNode:
    """One MariaDB server and where its files go; `galera` makes it a Galera cluster node."""

    name: str
    port: int
    directory: Path
    galera: Galera | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "mysqld.sock"


@dataclass(frozen=True)
class Galera:
    """A node's place in a Galera cluster: its replication (gcomm), IST and SST ports, the
    gcomm addresses of all nodes, and the account the donor's mariabackup uses for SST."""

    node_name: str
    cluster_name: str
    gcomm_port: int
    ist_port: int
    sst_port: int
    members: tuple[int, ...]  # every node's gcomm port
    sst_user: str
    sst_password: str


def single_node(settings: StackSettings) -> MariaNode:
    return MariaNode(name=NAME, port=settings.db.port, directory=stack_dir() / NAME)


def _socket() -> Path:
    return stack_dir() / NAME / "mysqld.sock"


def node_daemon(node: MariaNode) -> Daemon:
    ports: tuple[int, ...] = (node.port,)
    if node.galera is not None:
        ports += (node.galera.gcomm_port, node.galera.ist_port, node.galera.sst_port)
    return Daemon(
        name=node.name,
        ports=ports,
        directory=node.directory,
        log=node.directory / "mariadb.log",
        console=node.directory / "console.log",
        # A joiner copies the whole data set from a donor (SST) before it answers.
        ready_timeout=READY_TIMEOUT if node.galera is None else 180.0,
    )


def daemon(settings: StackSettings) -> Daemon:
    return node_daemon(single_node(settings))


def _program(name: str) -> str:
    found = find_program(name)
    if found is None:
        raise StackError(f"{name} not found; install the Debian packages {' '.join(PACKAGES)}")
    return found


def _client(sql: str, *, timeout: float = 30, socket: Path | None = None) -> str:
    """Run SQL as root over our socket (unix_socket auth: root needs no password there)."""
    argv = [
        _program("mariadb"),
        "--no-defaults",
        f"--socket={socket or _socket()}",
        "--user=root",
        "--batch",
        "--skip-column-names",
        f"--connect-timeout={int(timeout)}",
    ]
    return run(argv, input_text=sql, timeout=timeout).stdout


def _init_datadir(data: Path, log_dir: Path) -> None:
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
    (log_dir / "install-db.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise StackError(
            f"mariadb-install-db failed (exit {done.returncode}):\n"
            f"{(done.stdout + done.stderr).strip()[-3000:]}"
        )
    shutil.rmtree(data, ignore_errors=True)
    scratch.rename(data)


def _server_options(node: MariaNode) -> list[str]:
    directory = node.directory
    tls = identities.tls()
    options = [
        f"datadir={directory / 'data'}",
        f"socket={node.socket}",
        f"port={node.port}",
        f"bind-address={HOST}",
        f"pid-file={directory / 'mariadbd.pid'}",
        f"log-error={directory / 'mariadb.log'}",
        "skip-name-resolve",
        "max-connections=500",
        "innodb-buffer-pool-size=256M",
        # The redo log is synced to disk at every commit (=1, as in production). The services
        # answer 201, commit Kafka offsets and ack RabbitMQ messages right after a commit; with
        # =2 a machine crash could lose the last second of such orders while the broker has
        # already forgotten them. Benchmarks must measure this cost, not hide it.
        "innodb-flush-log-at-trx-commit=1",
        "character-set-server=utf8mb4",
        "collation-server=utf8mb4_unicode_ci",
        # TLS with the stack's certificate; the services' accounts REQUIRE SSL (`provision`).
        f"ssl-ca={tls.ca_file}",
        f"ssl-cert={tls.cert_file}",
        f"ssl-key={tls.key_file}",
        "tls-version=TLSv1.2,TLSv1.3",
    ]
    if os.geteuid() == 0:
        options.append("user=root")
    return options


def _galera_options(node: MariaNode, galera: Galera) -> list[str]:
    members = ",".join(f"{HOST}:{port}" for port in galera.members)
    return [
        "wsrep-on=ON",
        f"wsrep-provider={GALERA_PROVIDER}",
        f"wsrep-cluster-name={galera.cluster_name}",
        f"wsrep-cluster-address=gcomm://{members}",
        f"wsrep-node-name={galera.node_name}",
        f"wsrep-node-address={HOST}:{galera.gcomm_port}",
        f'wsrep-provider-options="gmcast.listen_addr=tcp://{HOST}:{galera.gcomm_port};'
        f'ist.recv_addr={HOST}:{galera.ist_port};gcache.size=128M"',
        f"wsrep-sst-receive-address={HOST}:{galera.sst_port}",
        "wsrep-sst-method=mariabackup",
        f"wsrep-sst-auth={galera.sst_user}:{galera.sst_password}",
        # Galera replicates row images; interleaved auto-increment locks never block it.
        "binlog-format=ROW",
        "default-storage-engine=InnoDB",
        "innodb-autoinc-lock-mode=2",
    ]


def _prepare_node(node: MariaNode, *, bootstrap: bool = False) -> Launch:
    directory = node.directory
    sock = node.socket
    if len(str(sock)) > _MAX_SOCKET_PATH:
        raise StackError(
            f"socket path {sock} is too long for a unix socket; "
            "set SHOP_STACK_DIR to a shorter path"
        )
    directory.mkdir(parents=True, exist_ok=True)
    _init_datadir(directory / "data", directory)
    sock.unlink(missing_ok=True)
    options = _server_options(node)
    if node.galera is None:
        argv = [_program("mariadbd"), "--no-defaults", *(f"--{option}" for option in options)]
        return Launch(argv=argv, env=dict(os.environ), cwd=directory)
    # A Galera node reads a file of its own (never /etc/mysql): the SST scripts run by the
    # server read their settings ([sst], the socket) from the same file. It holds the SST
    # account's password, so only we may read it.
    cnf = directory / "my.cnf"
    lines = ["[mysqld]", *options, *_galera_options(node, node.galera), "", "[sst]"]
    lines.append("sst-idle-timeout=120")
    cnf.write_text("\n".join(lines) + "\n")
    cnf.chmod(0o600)
    argv = [_program("mariadbd"), f"--defaults-file={cnf}"]
    if bootstrap:
        argv.append("--wsrep-new-cluster")
    # mariabackup and socat (the SST tools) live in sbin on some systems.
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/sbin"}
    return Launch(argv=argv, env=env, cwd=directory)


def _prepare(settings: StackSettings) -> Launch:
    return _prepare_node(single_node(settings))


def wsrep_status(node: MariaNode) -> dict[str, str]:
    """The node's wsrep status variables (empty if it does not answer)."""
    try:
        out = _client("SHOW GLOBAL STATUS LIKE 'wsrep%';", timeout=5, socket=node.socket)
    except StackError:
        return {}
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def node_ready(node: MariaNode) -> bool:
    """The socket answers a query; a Galera node must also be Synced with its cluster."""
    if not node.socket.exists():
        return False
    if node.galera is not None:
        return wsrep_status(node).get("wsrep_local_state_comment") == "Synced"
    try:
        return _client("SELECT 1;", timeout=5, socket=node.socket).strip() == "1"
    except StackError:
        return False


def start_node(node: MariaNode, *, bootstrap: bool = False) -> None:
    ensure_started(
        node_daemon(node),
        prepare=lambda: _prepare_node(node, bootstrap=bootstrap),
        ready=lambda: node_ready(node),
    )


def stop_node(node: MariaNode) -> None:
    ensure_stopped(node_daemon(node))


def ready(settings: StackSettings) -> bool:
    """The socket exists and a trivial query answers (TCP alone opens before InnoDB is ready)."""
    return node_ready(single_node(settings))


def _string(value: str) -> str:
    """A SQL string literal; the client runs with the default sql_mode (backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _db_pattern(db_name: str) -> str:
    """`shop%` for db_name=shop: the app DB and every `shop_*` DB (shop_test, ...).

    `_` is a wildcard in GRANT database names, so the literal part is escaped.
    """
    return "`" + db_name.replace("_", "\\_").replace("`", "``") + "%`"


# Each service logs in with its own account, which holds its role; `shop migrate` grants the
# roles their rights on the tables (storage/migrations.py RIGHTS). The migration account shapes
# the schema of every `shop…` database (and creates and drops the test and bench databases),
# and may pass rights on them on to the roles.
MIGRATION_RIGHTS = "ALL PRIVILEGES"
SERVICE_ROLES = {"shop_products": "shop_products_rights", "shop_orders": "shop_orders_rights"}
MIGRATION_USER = "shop_migrate"


def provision(settings: StackSettings, node: MariaNode | None = None) -> None:
    """Idempotently create the app database, the roles and the accounts: the migration account
    with its rights on `shop%`, each service's account with its role and nothing else, over TLS
    only. Passwords and rights are applied again every time (so widened rights narrow)."""
    pattern = _db_pattern(settings.db.name)
    database = "`" + settings.db.name.replace("`", "``") + "`"
    statements = [
        f"CREATE DATABASE IF NOT EXISTS {database} "
        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;",
        *(f"CREATE ROLE IF NOT EXISTS {role};" for role in SERVICE_ROLES.values()),
    ]
    migrate = _string(MIGRATION_USER), _string(identities.password(f"db:{MIGRATION_USER}"))
    for host in ("'127.0.0.1'", "'localhost'"):
        account = f"{migrate[0]}@{host}"
        statements += [
            f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {migrate[1]};",
            f"ALTER USER {account} IDENTIFIED BY {migrate[1]};",
            f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account};",
            f"GRANT {MIGRATION_RIGHTS} ON {pattern}.* TO {account} WITH GRANT OPTION;",
        ]
    for name, role in SERVICE_ROLES.items():
        user, password = _string(name), _string(identities.password(f"db:{name}"))
        for host in ("'127.0.0.1'", "'localhost'"):
            account = f"{user}@{host}"
            statements += [
                f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password} REQUIRE SSL;",
                f"ALTER USER {account} IDENTIFIED BY {password} REQUIRE SSL;",
                f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account};",
                f"GRANT {role} TO {account};",
                f"SET DEFAULT ROLE {role} FOR {account};",
            ]
    statements.append("FLUSH PRIVILEGES;")
    _client("\n".join(statements), socket=None if node is None else node.socket)


def open_baseline_account(user: str, password: str, database: str) -> None:
    """For a bench base from before the services had accounts and TLS: `user` on 127.0.0.1
    and localhost, without TLS, with every right on `database` (the base side's own, which it
    migrates and uses) and nowhere else. `drop_account` takes it away again."""
    if not database.startswith("shop_cmp_"):
        raise StackError(f"a baseline account is for a bench side's database, not {database}")
    name, secret = _string(user), _string(password)
    target = "`" + database.replace("`", "``") + "`"
    statements = []
    for host in ("'127.0.0.1'", "'localhost'"):
        account = f"{name}@{host}"
        statements += [
            f"CREATE OR REPLACE USER {account} IDENTIFIED BY {secret};",
            f"GRANT ALL PRIVILEGES ON {target}.* TO {account};",
        ]
    _client("\n".join(statements))


def drop_account(user: str) -> None:
    name = _string(user)
    hosts = ("'127.0.0.1'", "'localhost'")
    _client("".join(f"DROP USER IF EXISTS {name}@{host};" for host in hosts))


def start(settings: StackSettings) -> None:
    start_node(single_node(settings))
    provision(settings)


def stop(settings: StackSettings) -> None:
    stop_node(single_node(settings))


def status(settings: StackSettings) -> str:
    node = single_node(settings)
    return describe(node_daemon(node), lambda: node_ready(node))
