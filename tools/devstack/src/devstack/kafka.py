"""Apache Kafka in KRaft mode (one combined broker+controller) from Maven Central jars.

There is no Debian package for Kafka, and the release tarball comes from a mirror this machine
cannot reach, so Maven resolves `org.apache.kafka:kafka_2.13` and its runtime dependencies
into a per-version cache outside the repository; `java -cp <cache>/libs/*` runs it.

`make up`'s node (`secure`) takes only SASL/SCRAM-SHA-512 over TLS, with the stack's server
certificate (`identities.tls`), and authorizes with ACLs: `provision` gives the services'
principals (`orders`, `products`) their credentials and their ACLs on the configured topics
and group; `admin` (the broker's own identity, and the stack's tools) is a super user. The
controller listener takes SASL PLAIN over TLS from one account only the broker's configuration
knows. The cluster's nodes (`make cluster`) stay PLAINTEXT for now. See docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shop.settings import Kafka

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
    run_logged,
    say,
    stack_dir,
    with_tail,
)
from .settings import StackSettings

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding

NAME = "kafka"
KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
# Kafka 3.9.1's binary distribution ships slf4j 1.7.36 bound to reload4j 1.2.25 (log4j 1 API);
# the Maven artifact leaves the binding to the application, so we add the same two.
SLF4J_VERSION = "1.7.36"
RELOAD4J_VERSION = "1.2.25"
DEPENDENCY_PLUGIN_VERSION = "3.6.1"
READY_TIMEOUT = 90.0
MAVEN_TIMEOUT = 1800.0
CACHE_ENV = "SHOP_KAFKA_CACHE"
# The principals (SCRAM user names) of `make up`'s node. Passwords: identities.password("kafka:…").
ADMIN = "admin"  # the broker's own (inter-broker) identity and the stack's tools: a super user
CONTROLLER = "controller"  # the controller listener's only account (SASL PLAIN), broker only
SERVICE_PRINCIPALS = ("orders", "products")
SCRAM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
FORMAT_MARKER = "format.json"  # what the storage was formatted with (`_format_storage`)
PROVISION_SECONDS = 90.0  # as long as a start may take
PROVISION_REQUEST_SECONDS = 15.0

_POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by devstack: only used to fetch Kafka's jars with their dependencies. -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.shop.devstack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>{SLF4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>ch.qos.reload4j</groupId>
      <artifactId>reload4j</artifactId>
      <version>{RELOAD4J_VERSION}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""

_REQUIRED_JARS = (
    f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar",
    f"kafka-clients-{KAFKA_VERSION}.jar",
    f"slf4j-reload4j-{SLF4J_VERSION}.jar",
    f"reload4j-{RELOAD4J_VERSION}.jar",
)


def missing_packages() -> list[str]:
    """Debian packages needed to fetch and run Kafka (Java 17 and Maven)."""
    missing = []
    if find_program("java") is None:
        missing.append("openjdk-17-jre-headless")
    if find_program("mvn") is None:
        missing.append("maven")
    return missing


def cache_dir() -> Path:
    """~/.cache/shop/kafka-<version> (XDG_CACHE_HOME honoured; SHOP_KAFKA_CACHE overrides)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "shop" / f"kafka-{KAFKA_VERSION}"


def libs_dir() -> Path:
    return cache_dir() / "libs"


def _maven_progress(log_text: str) -> str:
    downloaded = log_text.count("Downloaded from")
    return f"{downloaded} files downloaded from Maven Central so far"


def install_jars() -> None:
    """Fetch Kafka and its runtime dependencies once per version; no-op when cached."""
    libs = libs_dir()
    if all((libs / jar).is_file() for jar in _REQUIRED_JARS):
        return
    mvn = find_program("mvn")
    if mvn is None:
        raise StackError("mvn not found; install the Debian package maven")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "pom.xml").write_text(_POM)
    # Copy into a scratch dir and rename at the end: an interrupted download is never "cached".
    partial = cache / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    log = cache / "maven.log"
    say(
        f"downloading Apache Kafka {KAFKA_VERSION} (kafka_{SCALA_VERSION}) and its dependencies "
        f"from Maven Central into {libs} (once; log: {log})"
    )
    argv = [
        mvn,
        "-B",  # batch mode: no interactive prompts; one line per download, no progress bars
        "-Dstyle.color=never",
        "-f",
        str(cache / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    code = run_logged(
        argv,
        log=log,
        timeout=MAVEN_TIMEOUT,
        label="maven",
        cwd=cache,
        progress=_maven_progress,
    )
    if code != 0:
        errors = [
            line for line in log.read_text(errors="replace").splitlines() if "[ERROR]" in line
        ]
        message = f"Maven could not fetch Kafka {KAFKA_VERSION} (exit {code}); log: {log}"
        if errors:
            raise StackError(message + "\n" + "\n".join(errors[:30]))
        raise StackError(with_tail(message, log))
    missing = [jar for jar in _REQUIRED_JARS if not (partial / jar).is_file()]
    if missing:
        raise StackError(with_tail(f"Maven finished but {', '.join(missing)} are missing", log))
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    say(f"Kafka {KAFKA_VERSION}: {len(list(libs.glob('*.jar')))} jars in {libs}")


def broker_port(settings: StackSettings) -> int:
    """The port of the first configured broker; we always bind 127.0.0.1."""
    first = settings.kafka.brokers.split(",")[0].strip()
    return int(first.rpartition(":")[2])


def controller_port(settings: StackSettings) -> int:
    return broker_port(settings) + 1


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft node (broker and controller in one process) and where its files go.

    `voters` is controller.quorum.voters (every node's id@host:controller-port); all nodes of
    one cluster share `cluster_id_file` and a replication factor.
    """

    name: str
    node_id: int
    broker_port: int
    controller_port: int
    directory: Path
    voters: str
    cluster_id_file: Path
    replication_factor: int = 1
    # SASL/SCRAM over TLS with ACLs (`make up`'s node); PLAINTEXT, anyone may do anything,
    # otherwise (the cluster's nodes, for now).
    secure: bool = False

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.broker_port}"


def single_node(settings: StackSettings) -> KafkaNode:
    """`make up`'s one node, on KAFKA_BROKERS' first port (controller on the next)."""
    directory = stack_dir() / NAME
    return KafkaNode(
        name=NAME,
        node_id=1,
        broker_port=broker_port(settings),
        controller_port=controller_port(settings),
        directory=directory,
        voters=f"1@{HOST}:{controller_port(settings)}",
        cluster_id_file=directory / "cluster.id",
        secure=True,
    )


def node_daemon(node: KafkaNode) -> Daemon:
    return Daemon(
        name=node.name,
        ports=(node.broker_port, node.controller_port),
        directory=node.directory,
        log=node.directory / "kafka.log",
        console=node.directory / "console.log",
        ready_timeout=READY_TIMEOUT,
    )


def daemon(settings: StackSettings) -> Daemon:
    return node_daemon(single_node(settings))


@dataclass(frozen=True)
class Secrets:
    """What a secure node's configuration holds: the server certificate and key (PEM), the CA
    it trusts as a client of itself, and the passwords of its own two accounts."""

    ca_file: Path
    certificate: str
    key: str
    admin_password: str
    controller_password: str

    @classmethod
    def of_stack(cls) -> Secrets:
        tls = identities.tls()
        return cls(
            ca_file=tls.ca_file,
            certificate=tls.cert_file.read_text(),
            key=tls.key_file.read_text(),
            admin_password=identities.password(f"kafka:{ADMIN}"),
            controller_password=identities.password(f"kafka:{CONTROLLER}"),
        )


def _property(value: str) -> str:
    """A value in a .properties file on one line (PEM's line breaks as `\\n`)."""
    return value.strip().replace("\\", "\\\\").replace("\n", "\\n")


def _jaas(module: str, **options: str) -> str:
    quoted = " ".join(f'{name}="{value}"' for name, value in options.items())
    return f"{module} required {quoted};"


def _listeners(node: KafkaNode, secrets: Secrets | None) -> str:
    """Who may connect and how. PLAINTEXT: anyone, as ANONYMOUS (the cluster). Secure: the
    clients' listener takes SCRAM-SHA-512 over TLS only, with the broker's own certificate
    (PEM inline: a PEM key store file would need an encrypted key); the controller listener
    takes SASL PLAIN over TLS from `controller` only (KRaft cannot read SCRAM credentials
    before it has read its metadata log, so its own listener cannot use them), whose password
    only this file holds. No listener lets ANONYMOUS in, so no ANONYMOUS super user is needed."""
    broker, controller = f"{HOST}:{node.broker_port}", f"{HOST}:{node.controller_port}"
    if secrets is None:
        return f"""listeners=PLAINTEXT://{broker},CONTROLLER://{controller}
advertised.listeners=PLAINTEXT://{broker}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""
    scram = _jaas(
        "org.apache.kafka.common.security.scram.ScramLoginModule",
        username=ADMIN,
        password=secrets.admin_password,
    )
    plain = _jaas(
        "org.apache.kafka.common.security.plain.PlainLoginModule",
        username=CONTROLLER,
        password=secrets.controller_password,
        **{f"user_{CONTROLLER}": secrets.controller_password},
    )
    return f"""listeners=SASL_SSL://{broker},CONTROLLER://{controller}
advertised.listeners=SASL_SSL://{broker}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SASL_SSL,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms={SCRAM}
sasl.mechanism.inter.broker.protocol={SCRAM}
listener.name.sasl_ssl.sasl.enabled.mechanisms={SCRAM}
listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config={scram}
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain}
ssl.keystore.type=PEM
ssl.keystore.certificate.chain={_property(secrets.certificate)}
ssl.keystore.key={_property(secrets.key)}
ssl.truststore.type=PEM
ssl.truststore.location={secrets.ca_file}
ssl.enabled.protocols=TLSv1.3,TLSv1.2
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{ADMIN};User:{CONTROLLER}
allow.everyone.if.no.acl.found=false
"""


def _server_properties(node: KafkaNode, secrets: Secrets | None = None) -> str:
    """The node's configuration; `secrets` for a secure node (`_listeners`)."""
    rf = node.replication_factor
    min_isr = max(1, rf - 1)
    return f"""# Written by devstack on every start; edit devstack/kafka.py instead.
process.roles=broker,controller
node.id={node.node_id}
controller.quorum.voters={node.voters}
{_listeners(node, secrets)}log.dirs={node.directory / "data"}
# Ordering is per key, so more partitions only add parallelism.
num.partitions=4
# Every topic, auto-created or internal, has this many copies; with acks=all a write needs
# all but one of them, and a replica that missed writes never becomes leader.
default.replication.factor={rf}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
offsets.topic.replication.factor={rf}
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
""" + (_CLUSTER_PROPERTIES if rf > 1 else "")


# A cluster notices a dead broker within 3 s (KRaft's default is 9 s) and moves its partitions'
# leadership: intake answers 503 for about that long after a leader dies.
_CLUSTER_PROPERTIES = """broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
"""


def _log4j_properties(node: KafkaNode) -> str:
    log = node.directory / "kafka.log"
    return f"""# Written by devstack: everything to one rolling file, nothing to the console.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.controller=INFO
log4j.logger.org.apache.kafka.raft=INFO
"""


def _new_cluster_id() -> str:
    """Same shape as `kafka-storage random-uuid`: 16 random bytes, url-safe base64, no padding.

    Kafka re-rolls ids starting with '-' because the CLI would read them as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java() -> str:
    java = find_program("java")
    if java is None:
        raise StackError("java not found; install the Debian package openjdk-17-jre-headless")
    return java


def _java_argv(main: str, *args: str, heap: tuple[str, ...], directory: Path) -> list[str]:
    return [
        _java(),
        *heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{directory / 'log4j.properties'}",
        f"-Dkafka.logs.dir={directory}",
        "-cp",
        f"{libs_dir()}/*",  # the JVM expands the wildcard itself
        main,
        *args,
    ]


def shared_cluster_id(id_file: Path) -> str:
    """The cluster's id, made by whichever node gets here first: the nodes of a cluster format
    their storage in parallel, and one that wrote its own id (check, then write) would form a
    cluster of its own (seen: INCONSISTENT_CLUSTER_ID, kafka-1 exiting while starting)."""
    id_file.parent.mkdir(parents=True, exist_ok=True)
    if not id_file.is_file():
        draft = id_file.with_name(f"{id_file.name}.{os.getpid()}.{threading.get_ident()}")
        draft.write_text(_new_cluster_id() + "\n")
        try:
            os.link(draft, id_file)  # atomic, complete when seen; refused if an id is there
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return id_file.read_text().strip()


def _format_record(secrets: Secrets) -> dict[str, str]:
    """What `format.json` says of a secure node's storage: formatted with the admin's SCRAM
    credential, for this password (a hash of it: the password itself is in identities)."""
    digest = hashlib.sha256(f"{ADMIN}:{secrets.admin_password}".encode()).hexdigest()
    return {"scram": SCRAM, "admin": digest}


def _format_storage(node: KafkaNode, properties: Path, secrets: Secrets | None = None) -> None:
    """Format the KRaft metadata log once; afterwards the data dir is simply reused. A secure
    node's storage gets the admin's SCRAM credential (the broker authenticates to itself with
    it, and the services' principals are made through it); storage formatted without it (by an
    older devstack) or for another admin password is formatted again: development data."""
    data = node.directory / "data"
    marker = node.directory / FORMAT_MARKER
    if (data / "meta.properties").is_file():
        if secrets is None or _read_json(marker) == _format_record(secrets):
            return
        say(
            f"{node.name}: its storage ({data}) was formatted without the stack's Kafka "
            "accounts (SCRAM credentials), or for another admin password; formatting it again: "
            "its topics, messages and consumer offsets (development data) are lost"
        )
        shutil.rmtree(data)
    marker.unlink(missing_ok=True)
    cluster_id = shared_cluster_id(node.cluster_id_file)
    say(f"formatting {node.name} storage (once, cluster id {cluster_id})")
    args = ["format", "--ignore-formatted", "-t", cluster_id, "-c", str(properties)]
    if secrets is not None:
        credential = f"{SCRAM}=[name={ADMIN},password={secrets.admin_password}]"
        args += ["--add-scram", credential]
    argv = _java_argv(
        "kafka.tools.StorageTool", *args, heap=("-Xmx256m",), directory=node.directory
    )
    _run_with_argfile(argv, node.directory / "format.args", timeout=120)
    if secrets is not None:
        _write_private(marker, json.dumps(_format_record(secrets)))


def _run_with_argfile(argv: list[str], argfile: Path, *, timeout: float) -> None:
    """Run `java ARGS` as `java @argfile` (a file readable by this user only, removed after):
    a password among the arguments never shows in `ps` or in an error message."""
    quoted = ('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"' for arg in argv[1:])
    _write_private(argfile, "\n".join(quoted) + "\n")
    try:
        run([argv[0], f"@{argfile}"], timeout=timeout)
    finally:
        argfile.unlink(missing_ok=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by this user only (it may hold passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with wider rights
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _prepare(node: KafkaNode) -> Launch:
    directory = node.directory
    directory.mkdir(parents=True, exist_ok=True)
    install_jars()  # returns at once when the jars are there
    secrets = Secrets.of_stack() if node.secure else None
    properties = directory / "server.properties"
    _write_private(properties, _server_properties(node, secrets))
    (directory / "log4j.properties").write_text(_log4j_properties(node))
    _format_storage(node, properties, secrets)
    argv = _java_argv(
        "kafka.Kafka", str(properties), heap=("-Xms256m", "-Xmx512m"), directory=directory
    )
    return Launch(argv=argv, env=dict(os.environ), cwd=directory)


_quiet = logging.getLogger("devstack.kafka.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def stack_admin(brokers: str) -> Kafka:
    """`make up`'s node as its administrator (from the stack's own identities)."""
    return Kafka(
        brokers=brokers,
        security_protocol="SASL_SSL",
        sasl_mechanism=SCRAM,
        user=ADMIN,
        password=identities.password(f"kafka:{ADMIN}"),
        ca_file=str(identities.tls().ca_file),
    )


def node_settings(node: KafkaNode) -> Kafka:
    """How the stack itself reaches `node`: as the administrator if it is secure."""
    return stack_admin(node.bootstrap) if node.secure else Kafka(brokers=node.bootstrap)


def as_admin(settings: StackSettings) -> Kafka:
    """`settings.kafka` (brokers, protocol, CA) as the stack's administrator, KAFKA_ADMIN_USER:
    what tests, the bench and tools use to read any topic and to make and delete their own.
    Unchanged without SASL (PLAINTEXT: compose, the cluster), where there are no principals."""
    kafka = settings.kafka
    if not kafka.security_protocol.startswith("SASL_"):
        return kafka
    admin = settings.kafka_admin
    password = admin.admin_password or identities.password(f"kafka:{ADMIN}")
    return kafka.model_copy(update={"user": admin.admin_user, "password": password})


def admin_client(kafka: Kafka) -> Any:
    """A confluent-kafka AdminClient on `kafka` (`client_config`) that keeps librdkafka's
    chatter and errors (a broker still starting) out of stderr."""
    from confluent_kafka.admin import AdminClient

    from shop.messaging.kafka import client_config

    config: dict[str, Any] = {
        **client_config(kafka),
        "error_cb": lambda _err: None,
        "logger": _quiet,
        "socket.timeout.ms": 2000,
    }
    return AdminClient(config)


def acls(kafka: Kafka) -> list[AclBinding]:
    """What each service's principal may do on the topics and the group `kafka` names: the
    order service (intake, its consumers, its outbox relay) writes order commands, order
    events and dead letters, and reads order commands in its group; the product service writes
    product events. WRITE and CREATE (topics are made on first use) with DESCRIBE; READ of
    a topic and of the group for the consumer. Literal names only: nothing matches a prefix."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    write = (AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.CREATE)
    grants: list[tuple[str, ResourceType, str, tuple[AclOperation, ...]]] = [
        ("orders", ResourceType.TOPIC, kafka.topic, (*write, AclOperation.READ)),
        ("orders", ResourceType.TOPIC, kafka.order_events_topic, write),
        ("orders", ResourceType.TOPIC, kafka.dlq_topic, write),
        ("orders", ResourceType.GROUP, kafka.consumer_group, (AclOperation.READ,)),
        ("products", ResourceType.TOPIC, kafka.product_events_topic, write),
    ]
    return [
        AclBinding(
            kind,
            name,
            ResourcePatternType.LITERAL,
            f"User:{principal}",
            "*",
            operation,
            AclPermissionType.ALLOW,
        )
        for principal, kind, name, operations in grants
        for operation in operations
    ]


def provision(settings: StackSettings, *, timeout: float = PROVISION_SECONDS) -> None:
    """As the administrator, idempotently: the services' principals with their passwords
    (SCRAM credentials, written again every time), and their ACLs on the topics and the group
    `settings` name (`acls`). `make up` provisions the default names; tests and the bench
    theirs. ACLs are only ever added here: `revoke` takes a run's away. Nothing to do where
    the brokers have no principals (KAFKA_SECURITY_PROTOCOL without SASL: compose, cluster)."""
    if settings.kafka.security_protocol.startswith("SASL_"):
        _provision(settings.kafka, timeout=timeout)


def _provision(kafka: Kafka, *, timeout: float) -> None:
    """`provision`, tried again until `timeout` has passed: a broker that just became ready
    (it answers metadata) may not answer the controller's requests yet on a busy machine."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = admin_client(stack_admin(kafka.brokers))
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts = [
        UserScramCredentialUpsertion(name, info, identities.password(f"kafka:{name}").encode())
        for name in SERVICE_PRINCIPALS
    ]
    deadline = time.monotonic() + timeout
    while True:
        wait = max(1.0, min(PROVISION_REQUEST_SECONDS, deadline - time.monotonic()))
        try:
            requests = (
                admin.alter_user_scram_credentials(upserts, request_timeout=wait),
                admin.create_acls(acls(kafka), request_timeout=wait),
            )
            for futures in requests:
                for future in futures.values():
                    future.result(timeout=wait + 5)
            return
        except Exception as exc:  # KafkaException and timeouts alike: again, or say what failed
            if time.monotonic() >= deadline:
                raise StackError(
                    f"could not provision Kafka's principals and ACLs within {timeout:.0f}s: {exc}"
                ) from None
            time.sleep(1.0)


def revoke(settings: StackSettings, prefix: str, *, timeout: float = 30.0) -> None:
    """Delete every ACL on a topic or group whose name starts with `prefix`: what a test run
    (`test-<run>-`) or a bench step provisioned for its own names, as it deletes its topics.
    By prefix, not by `acls(settings.kafka)`: names a run shares with others (its event
    topics, make up's defaults) keep their ACLs."""
    if not prefix:
        raise ValueError("revoke needs a prefix: an empty one would take every ACL away")
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    if not settings.kafka.security_protocol.startswith("SASL_"):
        return
    # None matches any name, principal and host (confluent-kafka's documentation; its type
    # annotations say str).
    anything: Any = None
    every = AclBindingFilter(
        ResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        anything,
        anything,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    admin = admin_client(stack_admin(settings.kafka.brokers))
    found = admin.describe_acls(every, request_timeout=timeout).result(timeout=timeout)
    doomed = [binding for binding in found if binding.name.startswith(prefix)]
    _delete_acls(settings.kafka.brokers, doomed, timeout=timeout)


def _delete_acls(brokers: str, bindings: list[AclBinding], *, timeout: float) -> None:
    from confluent_kafka.admin import AclBindingFilter

    if not bindings:
        return
    filters = [
        AclBindingFilter(
            b.restype,
            b.name,
            b.resource_pattern_type,
            b.principal,
            b.host,
            b.operation,
            b.permission_type,
        )
        for b in bindings
    ]
    admin = admin_client(stack_admin(brokers))
    for future in admin.delete_acls(filters, request_timeout=timeout).values():
        future.result(timeout=timeout)


def node_ready(node: KafkaNode) -> bool:
    """The broker accepts connections and answers a metadata request naming a broker."""
    if not port_open(node.broker_port):
        return False
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:  # outside the venv the TCP check has to do
        return True
    try:
        metadata = admin_client(node_settings(node)).list_topics(timeout=2)
    except Exception:  # any client error just means "not ready yet"
        return False
    return bool(metadata.brokers)


def ready(settings: StackSettings) -> bool:
    return node_ready(single_node(settings))


def start_node(node: KafkaNode) -> None:
    """Start `node` unless it runs. One that runs with another configuration than this code
    writes (a broker started before it took accounts, which nothing here could reach now) is
    restarted first."""
    daemon = node_daemon(node)
    properties = node.directory / "server.properties"
    if daemon.pid() is not None and properties.is_file():
        secrets = Secrets.of_stack() if node.secure else None
        if properties.read_text() != _server_properties(node, secrets):
            say(f"{node.name}: its configuration changed since it started; restarting it")
            ensure_stopped(daemon)
    ensure_started(daemon, prepare=lambda: _prepare(node), ready=lambda: node_ready(node))


def stop_node(node: KafkaNode) -> None:
    ensure_stopped(node_daemon(node))


def start(settings: StackSettings) -> None:
    """Start `make up`'s node unless it runs, then `provision` the configured names (also on
    the stack's first start, whose settings do not have the generated identities yet)."""
    node = single_node(settings)
    start_node(node)
    _provision(
        settings.kafka.model_copy(update={"brokers": node.bootstrap}), timeout=PROVISION_SECONDS
    )


def stop(settings: StackSettings) -> None:
    stop_node(single_node(settings))


def status(settings: StackSettings) -> str:
    node = single_node(settings)
    return describe(node_daemon(node), lambda: node_ready(node))
