"""Our own RabbitMQ node (with the management plugin), run as the current user from .stack.

The /usr/sbin wrappers of the Debian package switch to the `rabbitmq` user and its HOME, which
would put the Erlang cookie and data out of our reach, so the scripts in
/usr/lib/rabbitmq/bin are called directly with every location set by environment variables.
The node is named shop@localhost so that the machine's hostname (whatever it resolves to)
plays no part, and Erlang distribution and epmd listen on 127.0.0.1 only.

The single node speaks AMQP over TLS only, on RABBITMQ_PORT, with the stack's server
certificate (`identities.tls`); it has no plain AMQP listener. Its users are one per role
(`provision`): the order service's intake and consumer accounts, each limited by permission
patterns to its own exchange and queues (`shop.messaging.rabbitmq.Topology.permissions`), and
the administrator of the management API (plain HTTP on 127.0.0.1, for the stack and the tests).
The cluster's nodes (`layout`) keep plain AMQP and one application user (`provision_one_user`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shop.messaging.rabbitmq import Role, Topology

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
    port_open,
    run,
    say,
    stack_dir,
)
from .settings import StackSettings

NAME = "rabbitmq"
# Erlang's and RabbitMQ's own variables move them, for a second stack beside the first
# (SHOP_STACK_DIR and other ports): a node name and an epmd port are machine-wide.
NODE = os.environ.get("RABBITMQ_NODENAME") or "shop@localhost"
PACKAGES = ("rabbitmq-server",)
BIN = Path("/usr/lib/rabbitmq/bin")
READY_TIMEOUT = 90.0
EPMD_PORT = int(os.environ.get("ERL_EPMD_PORT") or 4369)
CTL_TIMEOUT = 60.0


def missing_packages() -> list[str]:
    if (BIN / "rabbitmq-server").is_file() and find_program("epmd", "/usr/lib/erlang/bin"):
        return []
    return list(PACKAGES)


@dataclass(frozen=True)
class RabbitNode:
    """One RabbitMQ node and where its files go.

    Nodes of one cluster share `home` (so the same Erlang cookie) and one epmd port, and have
    distinct node names, AMQP, management and distribution ports. With `tls`, AMQP is over TLS
    only (on `amqp_port`, with that certificate and key).
    """

    name: str  # the daemon's name in devstack (pidfile, status)
    nodename: str  # the Erlang node name
    amqp_port: int
    management_port: int
    dist_port: int
    directory: Path
    home: Path
    epmd_port: int = EPMD_PORT
    tls: identities.Tls | None = None


def single_node(settings: StackSettings) -> RabbitNode:
    directory = _dir()
    return RabbitNode(
        name=NAME,
        nodename=NODE,
        amqp_port=settings.rabbitmq.port,
        management_port=settings.stack.management_port,
        # RabbitMQ's own convention (AMQP port + 20000), pinned so it can be checked up front.
        dist_port=settings.rabbitmq.port + 20000,
        directory=directory,
        home=directory,
        tls=identities.tls(),
    )


def _dir() -> Path:
    return stack_dir() / NAME


def node_daemon(node: RabbitNode) -> Daemon:
    return Daemon(
        name=node.name,
        ports=(node.amqp_port, node.management_port, node.dist_port),
        directory=node.directory,
        log=node.directory / "log" / f"{node.nodename}.log",
        console=node.directory / "console.log",
        ready_timeout=READY_TIMEOUT,
    )


def daemon(settings: StackSettings) -> Daemon:
    return node_daemon(single_node(settings))


def _epmd_daemon(home: Path | None = None, port: int = EPMD_PORT) -> Daemon:
    directory = home or _dir()
    return Daemon(
        name="epmd",
        ports=(port,),
        directory=directory,
        log=directory / "epmd.log",
        console=directory / "epmd.log",
        ready_timeout=15.0,
    )


def node_env(node: RabbitNode) -> dict[str, str]:
    """Environment for the server and for rabbitmqctl: both must agree on node, HOME, cookie."""
    directory = node.directory
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    only_loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
    env.update(
        {
            "HOME": str(node.home),  # the Erlang cookie lives in $HOME/.erlang.cookie
            "LC_ALL": "C.UTF-8",  # the Elixir CLI warns (and misbehaves) under latin1
            "RABBITMQ_NODENAME": node.nodename,
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(directory / "beam.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": only_loopback,
            "RABBITMQ_CTL_ERL_ARGS": only_loopback,
            "ERL_EPMD_ADDRESS": HOST,
            "ERL_EPMD_PORT": str(node.epmd_port),
        }
    )
    if node.tls is None:  # plain AMQP (else the listeners are in rabbitmq.conf)
        env |= {"RABBITMQ_NODE_IP_ADDRESS": HOST, "RABBITMQ_NODE_PORT": str(node.amqp_port)}
    return env


def listener_config(node: RabbitNode) -> str:
    """rabbitmq.conf's AMQP listeners: with TLS, a TLS listener on the AMQP port and no plain
    one (TLS 1.2 or 1.3; clients authenticate with a password, not a certificate)."""
    if node.tls is None:
        return ""  # RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT (node_env)
    return (
        "listeners.tcp = none\n"
        f"listeners.ssl.default = {HOST}:{node.amqp_port}\n"
        f"ssl_options.cacertfile = {node.tls.ca_file}\n"
        f"ssl_options.certfile = {node.tls.cert_file}\n"
        f"ssl_options.keyfile = {node.tls.key_file}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
        "ssl_options.versions.1 = tlsv1.3\n"
        "ssl_options.versions.2 = tlsv1.2\n"
    )


def _write_config(node: RabbitNode) -> None:
    directory = node.directory
    (directory / "log").mkdir(parents=True, exist_ok=True)
    (directory / "mnesia").mkdir(parents=True, exist_ok=True)
    (directory / "rabbitmq.conf").write_text(
        f"management.tcp.ip = {HOST}\n"
        f"management.tcp.port = {node.management_port}\n"
        # Keep the log out of the console file; the file log is what we point people at.
        "log.console = false\n"
        "log.file.level = info\n" + listener_config(node)
    )
    (directory / "enabled_plugins").write_text("[rabbitmq_management].\n")
    # Sourced by the start scripts instead of /etc/rabbitmq/rabbitmq-env.conf.
    (directory / "rabbitmq-env.conf").write_text("# devstack: everything is set by env vars\n")


def _start_epmd(home: Path | None = None, port: int = EPMD_PORT) -> None:
    """Run epmd ourselves (foreground, own pidfile) so `down` can stop exactly that process.

    Left to Erlang, epmd daemonises outside our process group. If some other epmd already
    serves the port we simply share it.
    """
    epmd = _epmd_daemon(home, port)
    if port_open(port):
        return  # ours, or a shared one: either way nothing to do (and nothing to say)
    program = find_program("epmd", "/usr/lib/erlang/bin")
    if program is None:
        raise StackError("epmd not found; install the Debian package rabbitmq-server")
    argv = [program, "-address", HOST, "-port", str(port)]
    ensure_started(
        epmd,
        prepare=lambda: Launch(argv=argv, env=dict(os.environ), cwd=epmd.directory),
        ready=lambda: port_open(port),
    )


def _prepare_node(node: RabbitNode) -> Launch:
    _write_config(node)
    return Launch(argv=[str(BIN / "rabbitmq-server")], env=node_env(node), cwd=node.directory)


ALL_RIGHTS = ("configure", "write", "read")


def _http_get(settings: StackSettings, path: str, *, user: str, password: str) -> tuple[int, Any]:
    """GET a management API path as `user`: the status (0 if unreachable) and the JSON body."""
    return _http(settings, "GET", path, user=user, password=password)


def _http(
    settings: StackSettings,
    method: str,
    path: str,
    body: Any = None,
    *,
    user: str,
    password: str,
) -> tuple[int, Any]:
    """A management API request as `user`: the status (0 if unreachable) and the JSON body."""
    url = f"http://{HOST}:{settings.stack.management_port}{path}"
    credentials = f"{user}:{password}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http://127.0.0.1 only
            answer = response.read()
            return response.status, json.loads(answer) if answer else None
    except urllib.error.HTTPError as refused:
        try:
            return refused.code, json.loads(refused.read())
        except ValueError:
            return refused.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def _management_answers(port: int) -> bool:
    """The management listener speaks HTTP (any status): the plugin has started."""
    url = f"http://{HOST}:{port}/api/overview"
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # 401 without credentials is still a live management API
    except (urllib.error.URLError, OSError):
        return False


def node_ready(node: RabbitNode) -> bool:
    # AMQP listeners open at the very end of boot, after the plugins.
    return port_open(node.amqp_port) and _management_answers(node.management_port)


def ready(settings: StackSettings) -> bool:
    return node_ready(single_node(settings))


def _tags(user: Any) -> list[str]:
    tags = user.get("tags", []) if isinstance(user, dict) else []
    if isinstance(tags, str):  # older RabbitMQ versions: "administrator,monitoring"
        tags = [tag for tag in tags.split(",") if tag]
    return list(tags)


def _provisioned(settings: StackSettings) -> bool:
    """Cheap HTTP checks, so an `up` of a running, provisioned node spawns no Erlang CLI:
    the administrator logs in as one; the application user has no tags, all rights on the
    vhost, and its password (the management API refuses it as "Not management user", not as
    a failed login)."""
    admin = {"user": settings.stack.admin_user, "password": settings.stack.admin_password}
    status, me = _http_get(settings, "/api/whoami", **admin)
    if status != 200 or "administrator" not in _tags(me):
        return False
    vhost = urllib.parse.quote(settings.rabbitmq.vhost, safe="")
    app = urllib.parse.quote(settings.rabbitmq.user, safe="")
    status, user = _http_get(settings, f"/api/users/{app}", **admin)
    if status != 200 or _tags(user):
        return False
    for who in (app, urllib.parse.quote(settings.stack.admin_user, safe="")):
        status, perms = _http_get(settings, f"/api/permissions/{vhost}/{who}", **admin)
        if status != 200 or not all(perms.get(kind) == ".*" for kind in ALL_RIGHTS):
            return False
    status, refusal = _http_get(
        settings, "/api/whoami", user=settings.rabbitmq.user, password=settings.rabbitmq.password
    )
    return status == 401 and "not management user" in str(refusal).lower()


def ctl(node: RabbitNode, *args: str, check: bool = True, stdin: str | None = None) -> str:
    """rabbitmqctl against `node`; its output (stdout and stderr)."""
    argv = [str(BIN / "rabbitmqctl"), "-n", node.nodename, *args]
    done = run(argv, env=node_env(node), timeout=CTL_TIMEOUT, check=check, input_text=stdin)
    return done.stdout + done.stderr


def _user(settings: StackSettings, node: RabbitNode, user: str, password: str, *tags: str) -> None:
    """Create or update `user` with exactly `tags` and all rights on the configured vhost."""
    # Passwords go through stdin, never argv, where `ps` and our error messages would show them.
    output = ctl(node, "add_user", user, check=False, stdin=password)
    if "already exists" in output:
        ctl(node, "change_password", user, stdin=password)
    elif "Adding user" not in output:
        raise StackError(f"rabbitmqctl add_user {user} failed:\n{output.strip()}")
    ctl(node, "set_user_tags", user, *tags)
    ctl(node, "set_permissions", "-p", settings.rabbitmq.vhost, user, ".*", ".*", ".*")


def provision_one_user(settings: StackSettings, node: RabbitNode | None = None) -> None:
    """The cluster's: the application user (RABBITMQ_USER) without tags, so not an
    administrator, and an administrator (RABBITMQ_ADMIN_USER) for the management API; both
    with all rights on the configured vhost, the application's only one."""
    if settings.rabbitmq.user == settings.stack.admin_user:
        raise StackError("RABBITMQ_USER and RABBITMQ_ADMIN_USER must name different users")
    if _provisioned(settings):
        return
    node = node or single_node(settings)
    user, vhost = settings.rabbitmq.user, settings.rabbitmq.vhost
    say(f"provisioning RabbitMQ users {user!r} and {settings.stack.admin_user!r} on {vhost!r}")
    if vhost != "/":
        output = ctl(node, "add_vhost", vhost, check=False)
        if "already" not in output and "Adding vhost" not in output:
            raise StackError(f"rabbitmqctl add_vhost {vhost} failed:\n{output.strip()}")
    admin, admin_password = settings.stack.admin_user, settings.stack.admin_password
    _user(settings, node, admin, admin_password, "administrator")
    _user(settings, node, user, settings.rabbitmq.password)


def accounts(settings: StackSettings) -> dict[str, tuple[str, tuple[Role, ...]]]:
    """The services' accounts by user: password and roles. RABBITMQ_USER is intake's, and the
    consumers' unless RABBITMQ_CONSUMER_USER names another (then one account has both roles)."""
    rabbit = settings.rabbitmq
    consumer, consumer_password = rabbit.consumer_user, rabbit.consumer_password
    if consumer is None or consumer_password is None or consumer == rabbit.user:
        return {rabbit.user: (rabbit.password, ("intake", "consumer"))}
    return {
        rabbit.user: (rabbit.password, ("intake",)),
        consumer: (consumer_password, ("consumer",)),
    }


class _Api:
    """The management API as the stack's administrator; any answer but 2xx is a StackError."""

    def __init__(self, settings: StackSettings) -> None:
        self._settings = settings

    def __call__(
        self, method: str, path: str, body: Any = None, *, missing_ok: bool = False
    ) -> Any:
        admin = self._settings.stack
        status, answer = _http(
            self._settings, method, path, body, user=admin.admin_user, password=admin.admin_password
        )
        if 200 <= status < 300 or (missing_ok and status == 404):
            return answer
        raise StackError(f"RabbitMQ management API: {method} {path} answered {status}: {answer}")


def _quoted(*names: str) -> list[str]:
    return [urllib.parse.quote(name, safe="") for name in names]


def _ensure_admin(settings: StackSettings, node: RabbitNode) -> None:
    """The administrator (RABBITMQ_ADMIN_USER) logs in to the management API, or is made so
    with rabbitmqctl (a fresh node has no user of ours)."""
    admin, password = settings.stack.admin_user, settings.stack.admin_password
    status, me = _http_get(settings, "/api/whoami", user=admin, password=password)
    if status == 200 and "administrator" in _tags(me):
        return
    say(f"provisioning the RabbitMQ administrator {admin!r}")
    # Passwords go through stdin, never argv, where `ps` and our error messages would show them.
    output = ctl(node, "add_user", admin, check=False, stdin=password)
    if "already exists" in output:
        ctl(node, "change_password", admin, stdin=password)
    elif "Adding user" not in output:
        raise StackError(f"rabbitmqctl add_user {admin} failed:\n{output.strip()}")
    ctl(node, "set_user_tags", admin, "administrator")


def provision(settings: StackSettings, node: RabbitNode | None = None) -> None:
    """The single node's users and the order topology of the configured names (RABBITMQ_VHOST,
    RABBITMQ_QUEUE), idempotent: the administrator (rabbitmqctl, if it cannot log in yet);
    then through the management API, as it: the vhost, each service account with its password,
    no tags and its role's permission patterns on the vhost (`shop.messaging.rabbitmq.Topology
    .permissions`: RabbitMQ keeps one triple per user and vhost, so other names need their
    own vhost: the tests' run, the bench's sides); all rights there for the administrator; the
    exchanges, queues and bindings that the consumers would declare (so that intake, which
    only checks its exchange, is ready before they ever ran). RabbitMQ's `guest` is deleted."""
    rabbit, admin = settings.rabbitmq, settings.stack.admin_user
    services = accounts(settings)
    if admin in services:
        raise StackError(
            "RABBITMQ_USER, RABBITMQ_CONSUMER_USER and RABBITMQ_ADMIN_USER must differ"
        )
    _ensure_admin(settings, node or single_node(settings))
    api = _Api(settings)
    (vhost,) = _quoted(rabbit.vhost)
    api("PUT", f"/api/vhosts/{vhost}", {})
    topology = Topology(rabbit)
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    for user, (password, roles) in services.items():
        (who,) = _quoted(user)
        api("PUT", f"/api/users/{who}", {"password": password, "tags": ""})
        api("PUT", f"/api/permissions/{vhost}/{who}", topology.permissions(*roles)._asdict())
    api("PUT", f"/api/permissions/{vhost}/{_quoted(admin)[0]}", everything)
    if "guest" not in services:  # all rights on "/" from any local client, password "guest"
        api("DELETE", "/api/users/guest", missing_ok=True)
    _declare(api, vhost, topology)


def _declare(api: _Api, vhost: str, topology: Topology) -> None:
    """What `Topology.declare` declares, through the management API."""
    exchange, dlx, queue, dlq = _quoted(
        topology.exchange, topology.dlx, topology.queue, topology.dlq
    )
    for name in (dlx, exchange):
        api("PUT", f"/api/exchanges/{vhost}/{name}", {"type": "direct", "durable": True})
    for name, arguments in ((dlq, topology.dlq_arguments), (queue, topology.arguments)):
        api("PUT", f"/api/queues/{vhost}/{name}", {"durable": True, "arguments": arguments})
    for source, destination, key in ((dlx, dlq, topology.dlq), (exchange, queue, topology.queue)):
        api("POST", f"/api/bindings/{vhost}/e/{source}/q/{destination}", {"routing_key": key})


def remove_vhost(settings: StackSettings) -> None:
    """Delete RABBITMQ_VHOST with everything in it (queues, exchanges, permissions), if there;
    for the tests' and the bench's own vhosts."""
    if settings.rabbitmq.vhost == "/":
        raise StackError("the default vhost stays")
    (vhost,) = _quoted(settings.rabbitmq.vhost)
    _Api(settings)("DELETE", f"/api/vhosts/{vhost}", missing_ok=True)


def admin_url(settings: StackSettings) -> str:
    """An AMQP URL of the administrator (all rights on RABBITMQ_VHOST), over TLS as the
    services connect: for tests and benchmarks that read dead letters or make scratch queues."""
    return settings.rabbitmq.url_for(settings.stack.admin_user, settings.stack.admin_password)


# RabbitMQ 3.10 (Debian 12's) can crash a node that boots while a peer reloads its feature
# flag registry ("incompatible_feature_flags ... badmap,undefined"; rabbitmq-server#12966 is a
# later fix of the kind): seen when a killed node rejoins, or nodes start together. Booting it
# again succeeds; nothing else about a start is retried.
FEATURE_FLAG_RACE = "incompatible_feature_flags"
START_ATTEMPTS = 3


def start_node(node: RabbitNode) -> None:
    _start_epmd(node.home, node.epmd_port)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ensure_started(
                node_daemon(node),
                prepare=lambda: _prepare_node(node),
                ready=lambda: node_ready(node),
            )
            return
        except StackError as exc:
            if FEATURE_FLAG_RACE not in str(exc) or attempt == START_ATTEMPTS:
                raise
            say(f"{node.name} hit RabbitMQ's feature-flag race at boot; starting it again")
            time.sleep(2)


def stop_node(node: RabbitNode) -> None:
    ensure_stopped(node_daemon(node))


def stop_epmd(home: Path, port: int) -> None:
    ensure_stopped(_epmd_daemon(home, port))


def start(settings: StackSettings) -> None:
    start_node(single_node(settings))
    provision(settings)


def stop(settings: StackSettings) -> None:
    stop_node(single_node(settings))
    ensure_stopped(_epmd_daemon())


def stop_stray_epmd() -> None:
    """Kill an idle epmd (no registered nodes) that Erlang tools spawned behind our back.

    epmd daemonises when any Erlang program starts it, escaping our process groups; with no
    node registered it serves nobody, so stopping it is harmless.
    """
    program = find_program("epmd", "/usr/lib/erlang/bin")
    if program is None or not port_open(EPMD_PORT):
        return
    names = run([program, "-port", str(EPMD_PORT), "-names"], timeout=10, check=False)
    registered = [line for line in names.stdout.splitlines() if line.startswith("name ")]
    if names.returncode == 0 and not registered:
        with contextlib.suppress(StackError):
            run([program, "-port", str(EPMD_PORT), "-kill"], timeout=10, check=False)


def status(settings: StackSettings) -> str:
    node = single_node(settings)
    return describe(node_daemon(node), lambda: node_ready(node))
