"""Apache Kafka in KRaft mode (one combined broker+controller) from Maven Central jars.

There is no Debian package for Kafka, and the release tarball comes from a mirror this machine
cannot reach, so Maven resolves `org.apache.kafka:kafka_2.13` and its runtime dependencies
into a per-version cache outside the repository; `java -cp <cache>/libs/*` runs it.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _server_properties(node: KafkaNode) -> str:
    rf = node.replication_factor
    min_isr = max(1, rf - 1)
    return f"""# Written by devstack on every start; edit devstack/kafka.py instead.
process.roles=broker,controller
node.id={node.node_id}
controller.quorum.voters={node.voters}
listeners=PLAINTEXT://{HOST}:{node.broker_port},CONTROLLER://{HOST}:{node.controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{node.broker_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={node.directory / "data"}
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


def _format_storage(node: KafkaNode, properties: Path) -> None:
    """Format the KRaft metadata log once; afterwards the data dir is simply reused."""
    data = node.directory / "data"
    if (data / "meta.properties").is_file():
        return
    cluster_id = shared_cluster_id(node.cluster_id_file)
    say(f"formatting {node.name} storage (once, cluster id {cluster_id})")
    argv = _java_argv(
        "kafka.tools.StorageTool",
        "format",
        "--ignore-formatted",
        "-t",
        cluster_id,
        "-c",
        str(properties),
        heap=("-Xmx256m",),
        directory=node.directory,
    )
    run(argv, timeout=120)


def _prepare(node: KafkaNode) -> Launch:
    directory = node.directory
    directory.mkdir(parents=True, exist_ok=True)
    install_jars()  # returns at once when the jars are there
    properties = directory / "server.properties"
    properties.write_text(_server_properties(node))
    (directory / "log4j.properties").write_text(_log4j_properties(node))
    _format_storage(node, properties)
    argv = _java_argv(
        "kafka.Kafka", str(properties), heap=("-Xms256m", "-Xmx512m"), directory=directory
    )
    return Launch(argv=argv, env=dict(os.environ), cwd=directory)


_quiet = logging.getLogger("devstack.kafka.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def admin_client(bootstrap: str) -> Any:
    """A confluent-kafka AdminClient that keeps librdkafka's chatter out of stderr."""
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": _quiet,
        "socket.timeout.ms": 2000,
    }
    return AdminClient(config)


def node_ready(node: KafkaNode) -> bool:
    """The broker accepts connections and answers a metadata request naming a broker."""
    if not port_open(node.broker_port):
        return False
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:  # outside the venv the TCP check has to do
        return True
    try:
        metadata = admin_client(node.bootstrap).list_topics(timeout=2)
    except Exception:  # any client error just means "not ready yet"
        return False
    return bool(metadata.brokers)


def ready(settings: StackSettings) -> bool:
    return node_ready(single_node(settings))


def start_node(node: KafkaNode) -> None:
    ensure_started(
        node_daemon(node), prepare=lambda: _prepare(node), ready=lambda: node_ready(node)
    )


def stop_node(node: KafkaNode) -> None:
    ensure_stopped(node_daemon(node))


def start(settings: StackSettings) -> None:
    start_node(single_node(settings))


def stop(settings: StackSettings) -> None:
    stop_node(single_node(settings))


def status(settings: StackSettings) -> str:
    node = single_node(settings)
    return describe(node_daemon(node), lambda: node_ready(node))
