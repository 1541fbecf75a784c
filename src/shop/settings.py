"""One validated settings tree: defaults < config.yaml < environment variables.

The tree has a group per concern (`settings.db.host`, `settings.orders.burst`); each leaf keeps
its public flat name, which is its environment variable (`DB_HOST`, `ORDER_BURST`) and its
place in config.yaml (`db: {host: ...}` is `db_host`). A group's leaves are named by the group's
prefix and the leaf (`db` + `host`) unless a leaf names its variable itself (`env(...)`).
Every timeout and interval the services use is a leaf here.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar
from urllib.parse import quote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.functional_validators import AfterValidator, BeforeValidator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_FILE_ENV = "SHOP_CONFIG"


class ConfigError(Exception):
    """Configuration that the services refuse to start with."""


def env(name: str, default: Any, **constraints: Any) -> Any:
    """A leaf (a pydantic `Field`) whose environment variable is `name`, not its group's prefix
    and its own name."""
    return Field(default, json_schema_extra={"env": name}, **constraints)


# A text setting whose empty value (`RABBITMQ_CA_FILE=`) means unset.
OptionalText = Annotated[str | None, BeforeValidator(lambda value: value or None)]


class Group(BaseModel):
    """A group of settings; `prefix` + a leaf's name is the leaf's flat (environment) name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    prefix: ClassVar[str] = ""


def _names(value: Any) -> Any:
    """A comma-separated list as a tuple (blanks around and between commas dropped)."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return value


class Database(Group):
    prefix = "db_"
    host: str = "127.0.0.1"
    port: int = Field(3306, ge=1, le=65535)
    # The services' account: rows only (SELECT, INSERT, UPDATE, DELETE). `shop migrate` and
    # whatever creates or drops databases and tables use the migration account below.
    user: str = "shop"
    password: str = "shop"
    migrate_user: str = "shop_migrate"
    migrate_password: str = "shop_migrate"
    name: str = Field("shop", pattern=r"^[A-Za-z0-9_]{1,64}$")
    pool_size: int = Field(20, ge=1, le=500)
    # Read-pool connections each service process opens at start (at most DB_POOL_SIZE are kept).
    warm_connections: int = Field(20, ge=0, le=500)
    timeout_seconds: float = Field(5.0, gt=0)
    recycle_seconds: float = Field(1800.0, gt=0)  # a connection is replaced after this long
    # The pause before each new try of a unit of work known not to have committed (so four
    # tries at most): a fail-over takes a few seconds. Comma-separated in the environment.
    retry_delays_seconds: Annotated[tuple[float, ...], BeforeValidator(_names)] = (0.05, 0.4, 1.5)
    # TLS to the server, its certificate checked against these CA certificates (PEM) and its
    # name against DB_HOST. Empty: plain TCP, for a server on this machine or a trusted link.
    ca_file: OptionalText = None

    @property
    def url(self) -> str:
        return self._url(self.user, self.password)

    def connect_args(self) -> dict[str, Any]:
        """The driver's connection arguments: its timeout, and TLS when DB_CA_FILE is set."""
        args: dict[str, Any] = {"connect_timeout": max(1, int(self.timeout_seconds))}
        if self.ca_file:
            args["ssl"] = ssl.create_default_context(cafile=self.ca_file)
        return args

    @property
    def migration_url(self) -> str:
        return self._url(self.migrate_user, self.migrate_password)

    def _url(self, user: str, password: str) -> str:
        account = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"mysql+asyncmy://{account}@{self.host}:{self.port}/{self.name}?charset=utf8mb4"


def _host_ports(value: str) -> str:
    for broker in value.split(","):
        host, _, port = broker.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"expected host:port[,host:port...], got {value!r}")
    return value


def https_url(value: str | None) -> str | None:
    """An https:// URL with a host, or None for an empty value."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(
            f"must be an https:// URL, got {value!r} (the signing keys decide who may do what: "
            "they are not fetched over plain HTTP)"
        )
    return value


class Kafka(Group):
    prefix = "kafka_"
    brokers: Annotated[str, AfterValidator(_host_ports)] = "127.0.0.1:9092"
    topic: str = Field("orders", min_length=1)
    product_events_topic: str = Field("product-events", min_length=1)
    order_events_topic: str = Field("order-events", min_length=1)
    dlq_topic: str = Field("orders.dlq", min_length=1)
    consumer_group: str = Field("order-service", min_length=1)
    # Copies of every topic the services create (3 on the cluster); min.insync.replicas is one
    # fewer (at least 1), so with acks=all a write survives the loss of any one broker.
    replication_factor: int = Field(1, ge=1, le=7)
    delivery_timeout_seconds: float = Field(10.0, gt=0)  # the events producer's, per message
    dlq_timeout_seconds: float = Field(10.0, gt=0)  # for the dead-letter topic to confirm
    lag_timeout_seconds: float = Field(5.0, gt=0)  # the lag gauge's read of committed offsets
    # For a broker's tasks to stop and its intake producer to flush.
    close_seconds: float = Field(2.0, gt=0)
    # How the services reach the brokers (`shop.messaging.kafka.client_config`). SASL_SSL (every
    # layout but the Helm chart's trial values): TLS, the brokers' certificate checked against
    # KAFKA_CA_FILE (the system's CAs without it) and their host name, and SASL as KAFKA_USER,
    # whose ACLs decide what it may do. PLAINTEXT: anyone who reaches the brokers may.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    user: str = ""
    password: str = Field("", repr=False)
    ca_file: OptionalText = None

    @model_validator(mode="after")
    def _sasl_needs_an_account(self) -> Self:
        if self.security_protocol.startswith("SASL_") and not (self.user and self.password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_USER and "
                "KAFKA_PASSWORD (or KAFKA_PASSWORD_FILE)"
            )
        return self


class RabbitMQ(Group):
    """The order commands' broker. Two roles, each with its own account where the broker has
    one per role (docs/security.md): intake (the HTTP workers) publishes to the order exchange
    as RABBITMQ_USER; the consumers read the queue and publish dead letters as
    RABBITMQ_CONSUMER_USER, or as RABBITMQ_USER when that is unset (one application user)."""

    prefix = "rabbitmq_"
    user: str = "guest"
    password: str = "guest"
    consumer_user: OptionalText = None
    consumer_password: OptionalText = None
    # TLS (amqps) to RABBITMQ_HOST:RABBITMQ_PORT, the server's certificate checked against these
    # CA certificates (PEM) and its name against RABBITMQ_HOST. Empty: plain AMQP.
    ca_file: OptionalText = None
    host: str = "127.0.0.1"
    port: int = Field(5672, ge=1, le=65535)
    vhost: str = "/"
    queue: str = Field("orders", min_length=1)
    # `quorum` (the cluster): the order queue and its dead-letter queue are replicated Raft
    # queues, and a message redelivered more than RABBITMQ_DELIVERY_LIMIT times is dead-lettered.
    queue_type: Literal["classic", "quorum"] = "classic"
    delivery_limit: int = Field(20, ge=1, le=10_000)
    # A failed connection attempt is retried after 0.5 s, then every second: a node lost behind
    # HAProxy is replaced by the next connection, so a second cuts a broker fail-over's outage.
    reconnect_first_seconds: float = Field(0.5, gt=0)
    reconnect_max_seconds: float = Field(1.0, gt=0)
    # At most one new publishing channel (after nacks) per this many seconds.
    renew_channel_seconds: float = Field(1.0, ge=0)
    close_seconds: float = Field(5.0, gt=0)  # for a connection's task to stop

    @model_validator(mode="after")
    def _consumer_account_whole(self) -> Self:
        if (self.consumer_user is None) != (self.consumer_password is None):
            raise ValueError(
                "RABBITMQ_CONSUMER_USER and RABBITMQ_CONSUMER_PASSWORD are set together "
                "(or neither: the consumers then use RABBITMQ_USER)"
            )
        return self

    @property
    def url(self) -> str:
        """Intake's: RABBITMQ_USER."""
        return self.url_for(self.user, self.password)

    @property
    def consumer_url(self) -> str:
        """The consumers': RABBITMQ_CONSUMER_USER, else RABBITMQ_USER (set together or not)."""
        user, password = self.consumer_user or self.user, self.consumer_password or self.password
        return self.url_for(user, password)

    def url_for(self, user: str, password: str) -> str:
        """An AMQP URL for `user`: amqps with the CA file (aiormq's and aio-pika's `cafile`)
        when RABBITMQ_CA_FILE is set. It holds the password: never log it."""
        account = f"{quote(user, safe='')}:{quote(password, safe='')}"
        where = f"{self.host}:{self.port}/{quote(self.vhost, safe='')}"
        if self.ca_file is None:
            return f"amqp://{account}@{where}"
        return f"amqps://{account}@{where}?cafile={quote(self.ca_file, safe='')}"


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise ValueError(f"must be a power of two, got {value}")
    return value


def _networks(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if value != "*":
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"not an address or network: {value!r}") from None
    return values


class Http(Group):
    bind_host: str = "127.0.0.1"
    product_port: int = env("PRODUCT_SERVICE_PORT", 8080, ge=1, le=65535)
    order_port: int = env("ORDER_SERVICE_PORT", 8081, ge=1, le=65535)
    # Worker processes per HTTP service: by default one per core this process may run on.
    workers: int = Field(default_factory=lambda: max(1, len(os.sched_getaffinity(0))), ge=1, le=64)
    max_body_bytes: int = Field(65_536, ge=1024)
    # A request's headers must have arrived this long after its first byte (or the connection
    # opening), and its body this long after its headers (408 otherwise).
    request_header_seconds: float = Field(10.0, gt=0, le=300)
    request_body_seconds: float = Field(10.0, gt=0, le=300)
    # Connections (and requests in progress) one worker process takes before answering 503.
    max_connections: int = Field(4096, ge=16)
    keep_alive_seconds: int = Field(5, ge=1)  # an idle keep-alive connection is closed after it
    graceful_shutdown_seconds: int = Field(8, ge=1)
    # Background tasks get this long to stop, and the events producer to flush, at shutdown.
    shutdown_seconds: float = Field(5.0, gt=0)
    # Buckets per limit and node (`shop.access.bucket_table`: a fixed table shared by the
    # workers, 24-32 bytes a bucket); a power of two.
    rate_limit_slots: Annotated[int, AfterValidator(_power_of_two)] = Field(
        65_536, ge=1024, le=2**24
    )
    # Peers whose X-Forwarded-For names the client (per-client limits), comma-separated
    # addresses or networks; `*` trusts every peer (only behind a proxy that overwrites it).
    forwarded_allow_ips: Annotated[
        tuple[str, ...], BeforeValidator(_names), AfterValidator(_networks)
    ] = ("127.0.0.1", "::1")


class Orders(Group):
    # Sync orders waiting for their batch beyond this many are refused at once (503).
    sync_queue_limit: int = Field(1000, ge=1, le=100_000)
    consumer_batch_size: int = Field(500, ge=1, le=5000)
    # The most units one order may ask for (422 above it), an abuse limit.
    max_quantity: int = env("MAX_ORDER_QUANTITY", 1000, ge=1, le=1_000_000)
    # A customer may place ORDER_BURST orders at once, then ORDER_RATE_PER_SECOND, and order
    # CUSTOMER_UNITS_BURST units at once, then CUSTOMER_UNITS_PER_MINUTE (429 beyond; counted
    # by all the workers of a node together; orders:admin is not limited).
    rate_per_second: float = env("ORDER_RATE_PER_SECOND", 10.0, gt=0)
    burst: int = env("ORDER_BURST", 20, ge=1)
    units_per_minute: float = env("CUSTOMER_UNITS_PER_MINUTE", 6000.0, gt=0)
    units_burst: int = env("CUSTOMER_UNITS_BURST", 2000, ge=1)
    broker_deadline_seconds: float = Field(2.0, gt=0, le=30)
    consumers_enabled: bool = True
    # The consumers in a process of their own beside the HTTP server (the other core), not on
    # its event loop.
    consumer_process: bool = True
    # That process's nice value: when both cores are busy, intake (the HTTP workers) goes first
    # and the stored orders follow; an idle machine runs it at full speed anyway.
    consumer_nice: int = Field(10, ge=0, le=19)
    consumer_stop_seconds: float = Field(10.0, gt=0)  # to finish its batch; then SIGKILL
    broker_retry_after_seconds: int = Field(2, ge=0)  # the Retry-After of a broker's 503
    intake_lookup_seconds: float = Field(0.5, gt=0)  # intake's budget for a key claim
    # Intake trusts a product's price this long, and gives a price read this long.
    intake_price_seconds: float = Field(60.0, ge=0)
    intake_price_budget_seconds: float = Field(0.5, gt=0)
    # How long an idle consumer waits for a delivery before it looks at `stopping` again.
    consumer_take_seconds: float = Field(0.25, gt=0)
    # Under load a batch fills a little longer, in steps while they bring a busy stream's
    # deliveries: at 600 orders/s RabbitMQ batches averaged 7 without it, and the per-batch
    # statements were most of the consumer's CPU. A lone order does not wait, a trickle one step.
    consumer_linger_seconds: float = Field(0.01, ge=0)
    consumer_linger_max_seconds: float = Field(0.25, ge=0)
    # A batch that failed (database down) is retried after this, doubling up to the maximum.
    consumer_retry_first_seconds: float = Field(0.1, gt=0)
    consumer_retry_max_seconds: float = Field(5.0, gt=0)
    consumer_depth_seconds: float = Field(5.0, gt=0)  # how often the queue depth gauge is read


class Products(Group):
    prefix = "product_list_cache_"
    cache_seconds: float = env("PRODUCT_LIST_CACHE_SECONDS", 1.0, ge=0, le=60)
    # The bytes of pages that cache may hold per worker process; expired pages go first.
    cache_bytes: int = env("PRODUCT_LIST_CACHE_BYTES", 16 * 1024 * 1024, ge=0)
    # The server stops a catalogue query after this (MariaDB max_statement_time, MySQL
    # MAX_EXECUTION_TIME); the request gets 503.
    query_seconds: float = env("PRODUCT_QUERY_SECONDS", 2.0, gt=0, le=60)
    # A search (a `name` or price filter) per client: SEARCH_BURST at once, then
    # SEARCH_RATE_PER_SECOND (429 beyond; per node; products:write is not limited). At most
    # SEARCH_CONCURRENCY searches of a worker hold a database connection at once: the others
    # wait (up to DB_TIMEOUT_SECONDS, then 503), so searches never take the whole pool.
    search_rate_per_second: float = env("SEARCH_RATE_PER_SECOND", 10.0, gt=0)
    search_burst: int = env("SEARCH_BURST", 30, ge=1)
    search_concurrency: int = env("SEARCH_CONCURRENCY", 8, ge=1, le=500)


class Outbox(Group):
    prefix = "outbox_"
    batch_size: int = Field(500, ge=1, le=10_000)
    poll_seconds: float = Field(0.2, gt=0, le=60)
    # The outbox relay runs in this process. `shop serve` turns it off in the order service's
    # HTTP workers: their consumer process relays what they commit (one relay, off their loop).
    relay_enabled: bool = True
    retention_seconds: float = Field(3600.0, ge=0)  # published events kept this long
    # An Idempotency-Key is remembered this long; a retry after that is a new request.
    key_ttl_seconds: float = env("IDEMPOTENCY_KEY_TTL_SECONDS", 86_400.0, ge=60)
    publish_timeout_seconds: float = Field(11.0, gt=0)  # a relay round's publish to Kafka
    # After a round that emptied the table, the next one starts no sooner than this: under load
    # the commits of these milliseconds share one claim, one publish and one mark instead of a
    # round each (see docs/performance.md); an event waits this much longer at most.
    round_gap_seconds: float = Field(0.02, gt=0, le=1)
    # The backlog's gauges (its count, the age of its oldest event) are read this often.
    backlog_every_seconds: float = Field(5.0, gt=0)
    backlog_timeout_seconds: float = Field(5.0, gt=0)
    # A failed round (Kafka or the database down) is tried again after this, doubled, at most max.
    retry_seconds: float = Field(0.2, gt=0)
    retry_max_seconds: float = Field(5.0, gt=0)
    purge_every_seconds: float = Field(60.0, gt=0)  # expired events and Idempotency-Keys
    purge_timeout_seconds: float = Field(30.0, gt=0)  # a purge batch's transaction


def _otlp_url(value: str | None) -> str | None:
    if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


class Tracing(Group):
    """OpenTelemetry traces (`shop.tracing`, docs/observability.md), under the standard OTEL_*
    names: off unless OTEL_EXPORTER_OTLP_ENDPOINT names an OTLP/HTTP receiver."""

    prefix = "otel_"
    # The receiver's base URL (http://collector:4318); spans go to <endpoint>/v1/traces.
    endpoint: Annotated[OptionalText, AfterValidator(_otlp_url)] = env(
        "OTEL_EXPORTER_OTLP_ENDPOINT", None
    )
    # The share of requests traced, drawn as each arrives (`tracing.pick`); what they cause
    # (batches, messages, the relay's publish) is traced with them.
    sampling_ratio: float = env("OTEL_TRACES_SAMPLER_ARG", 1.0, ge=0, le=1)
    # Headers for the receiver (`authorization=Bearer ...`), comma-separated name=value pairs.
    headers: OptionalText = env("OTEL_EXPORTER_OTLP_HEADERS", None)
    # The CA certificates (PEM) an https:// receiver's certificate is checked against.
    ca_file: OptionalText = env("OTEL_EXPORTER_OTLP_CERTIFICATE", None)
    export_timeout_seconds: float = Field(10.0, gt=0)  # one export's request
    export_every_seconds: float = Field(2.0, gt=0, le=60)  # spans wait at most this to go
    queue_spans: int = Field(8192, ge=64)  # spans waiting for export; beyond it, dropped

    def header_pairs(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in (self.headers or "").split(","))
        return {name.strip(): value.strip() for name, _, value in pairs if name.strip()}


class Auth(Group):
    """Access tokens (`shop.access.verifier`): JWTs from this issuer for this audience, verified
    with the keys at AUTH_JWKS_URL or, without it, the PEM public key in AUTH_PUBLIC_KEY_FILE
    (the local stack's development issuer writes it; paths are relative to the working
    directory)."""

    prefix = "auth_"
    issuer: str = Field("shop-dev", min_length=1)
    audience: str = Field("shop", min_length=1)
    # Fetched over https only (a redirect is not followed), trusting the CA certificates (PEM)
    # in AUTH_JWKS_CA_FILE, or the system's without it.
    jwks_url: Annotated[str | None, AfterValidator(https_url)] = None
    jwks_ca_file: OptionalText = None
    public_key_file: str = ".stack/auth/public.pem"
    signing_key_file: str = ".stack/auth/signing.pem"  # `shop token` only
    leeway_seconds: float = Field(30.0, ge=0, le=300)
    jwks_refresh_seconds: float = Field(60.0, ge=1)  # at most one JWKS fetch per this
    # The JWKS is fetched again when its response's Cache-Control max-age has passed (the
    # default when it has none), and at least every AUTH_JWKS_MAX_AGE_SECONDS: a key the
    # provider removed is refused within that.
    jwks_default_max_age_seconds: float = Field(300.0, ge=1)
    jwks_max_age_seconds: float = Field(600.0, ge=1, le=3600)
    timeout_seconds: float = Field(3.0, gt=0, le=30)
    user_claim: str = Field("sub", min_length=1)  # the claim holding the user id
    # Only RFC 9068 access tokens (header `typ` at+jwt): an OIDC ID token for the same audience
    # is refused. Off (false) only for a provider that cannot mark its access tokens.
    require_at_jwt: bool = True
    # The clients whose tokens are accepted (`client_id`, or `azp` where a token has no
    # client_id), comma-separated; empty: any client of the issuer.
    allowed_clients: Annotated[tuple[str, ...], BeforeValidator(_names)] = ()
    # A role or group claim that makes a caller an administrator (what the scope orders:admin
    # grants): the claim's path, dotted for a nested one (Keycloak's realm roles are
    # `realm_access.roles`), and the value it must hold (or be). Empty: scopes only.
    admin_claim: OptionalText = None
    admin_role: str = Field("shop-admin", min_length=1)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class Settings(BaseSettings):
    """Everything configurable, read once at start and passed in."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    db: Database = Database()
    kafka: Kafka = Kafka()
    rabbitmq: RabbitMQ = RabbitMQ()
    http: Http = Field(default_factory=Http)
    orders: Orders = Orders()
    products: Products = Products()
    outbox: Outbox = Outbox()
    auth: Auth = Auth()
    tracing: Tracing = Tracing()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Listening beyond loopback with the development passwords is refused unless this says so
    # (a throw-away setup; no layout of this repository sets it: loopback needs no exception).
    allow_default_passwords: bool = False

    @model_validator(mode="before")
    @classmethod
    def _tree_from_flat_names(cls, data: Any) -> Any:
        """Every source gives flat names (`db_host`); the tree takes them as `db.host`."""
        if not isinstance(data, dict):
            return data
        tree: dict[str, Any] = {}
        for name, value in data.items():
            path = flat_names(cls).get(name.lower())
            if path is None or len(path) == 1:
                tree[path[0] if path else name] = value
            else:
                group = tree.setdefault(path[0], {})
                if isinstance(group, dict):
                    group[path[1]] = value
        return tree

    @model_validator(mode="after")
    def _largest_order_fits_the_units_burst(self) -> Settings:
        orders = self.orders
        if orders.units_burst < orders.max_quantity:
            raise ValueError(
                f"CUSTOMER_UNITS_BURST ({orders.units_burst}) is below MAX_ORDER_QUANTITY "
                f"({orders.max_quantity}): an order of that many units could never be placed"
            )
        return self

    @model_validator(mode="after")
    def _no_default_passwords_beyond_loopback(self) -> Settings:
        if self.allow_default_passwords or _is_loopback(self.http.bind_host):
            return self
        groups: tuple[Database | RabbitMQ, ...] = (self.db, self.rabbitmq)
        defaults = [
            f"{g.prefix}password".upper() for g in groups if g.password == type(g)().password
        ]
        if defaults:
            raise ValueError(
                f"BIND_HOST={self.http.bind_host} listens beyond this machine, but "
                f"{' and '.join(defaults)} still have their development defaults: set real "
                "passwords (or ALLOW_DEFAULT_PASSWORDS=true for a throw-away setup)"
            )
        return self

    def replace(self, **flat: Any) -> Self:
        """These settings with some leaves changed, named by their flat names (`db_user=...`)."""
        return type(self).model_validate({**self.flat(), **flat})

    def flat(self) -> dict[str, Any]:
        """Every leaf by its flat name."""
        return {
            name: functools.reduce(getattr, path, self)
            for name, path in flat_names(type(self)).items()
        }

    def migration_account(self) -> Self:
        """These settings with the migration account as the database user: it may create, alter
        and drop tables and databases (migrations, tests' and benchmarks' scratch tables)."""
        return self.replace(db_user=self.db.migrate_user, db_password=self.db.migrate_password)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _EnvSource(settings_cls), _YamlSource(settings_cls))


S = TypeVar("S", bound=Settings)


@functools.cache
def flat_names(settings_cls: type[BaseSettings]) -> dict[str, tuple[str, ...]]:
    """Each leaf's flat name (lower case) and its path in the tree."""
    names: dict[str, tuple[str, ...]] = {}
    for field, info in settings_cls.model_fields.items():
        group = info.annotation
        if not (isinstance(group, type) and issubclass(group, Group)):
            names[field] = (field,)
            continue
        for leaf, leaf_info in group.model_fields.items():
            extra = leaf_info.json_schema_extra
            named = extra.get("env") if isinstance(extra, dict) else None
            names[str(named).lower() if named else group.prefix + leaf] = (field, leaf)
    return names


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Turn `db: {host: x}` into `{"db_host": x}`, matching the flat env names."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}".lower().replace("-", "_")
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


class _FlatSource(PydanticBaseSettingsSource):
    """A source that gives every value at once, by flat name (`__call__`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False


class _EnvSource(_FlatSource):
    """The environment variables named by the leaves' flat names (case-insensitive); a leaf's
    `<NAME>_FILE` names a file that holds its value instead (Docker's convention for secrets,
    as in `DB_PASSWORD_FILE=/run/secrets/db_password`)."""

    def __call__(self) -> dict[str, Any]:
        environ = {name.lower(): value for name, value in os.environ.items()}
        values = {}
        for name in flat_names(self.settings_cls):
            if name in environ:
                values[name] = environ[name]
            elif (path := environ.get(f"{name}_file")) is not None:
                try:
                    values[name] = Path(path).read_text().removesuffix("\n")
                except OSError as exc:
                    raise ConfigError(f"{name.upper()}_FILE={path}: {exc.strerror}") from None
        return values


class _YamlSource(_FlatSource):
    """Reads config.yaml (or the file named by SHOP_CONFIG); a missing default file is fine."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        explicit = os.environ.get(CONFIG_FILE_ENV)
        path = Path(explicit or "config.yaml")
        self._data: dict[str, Any] = {}
        if not path.is_file():
            if explicit:
                raise ConfigError(f"{CONFIG_FILE_ENV}={explicit}: file not found")
            return
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        self._data = _flatten(loaded)
        unknown = sorted(set(self._data) - set(flat_names(settings_cls)))
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings (`overrides` by flat name win over everything), turning validation
    failures into one message naming each setting by its environment variable."""
    return load(Settings, **overrides)


def load(settings_cls: type[S], **overrides: Any) -> S:
    """`load_settings` for `settings_cls` (a subclass may add groups: the local stack's)."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        names = {path: name.upper() for name, path in flat_names(settings_cls).items()}

        def named(loc: tuple[int | str, ...]) -> str:
            path = tuple(str(part) for part in loc)
            return names.get(path[:2]) or names.get(path[:1]) or ".".join(path).upper()

        problems = "; ".join(
            f"{named(err['loc'])}: {str(err['msg']).removeprefix('Value error, ')}"
            if err["loc"]
            else str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
