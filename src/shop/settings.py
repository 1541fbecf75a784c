"""One validated settings object: defaults < config.yaml < environment variables."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_FILE_ENV = "SHOP_CONFIG"
DEFAULT_CONFIG_FILE = "config.yaml"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask), at least one."""
    return max(1, len(os.sched_getaffinity(0)))


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


class _YamlSource(PydanticBaseSettingsSource):
    """Reads config.yaml (or the file named by SHOP_CONFIG); a missing default file is fine."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        explicit = os.environ.get(CONFIG_FILE_ENV)
        path = Path(explicit or DEFAULT_CONFIG_FILE)
        self._data: dict[str, Any] = {}
        if not path.is_file():
            if explicit:
                raise ConfigError(f"{CONFIG_FILE_ENV}={explicit}: file not found")
            return
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        self._data = _flatten(loaded)
        fields = set(settings_cls.model_fields)
        unknown = sorted(set(self._data) - fields)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class ConfigError(Exception):
    """Configuration that the services refuse to start with."""


class Settings(BaseSettings):
    """Everything configurable, read once at start and passed in."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    db_host: str = "127.0.0.1"
    db_port: int = Field(3306, ge=1, le=65535)
    # The services' account: rows only (SELECT, INSERT, UPDATE, DELETE). `shop migrate` and
    # whatever creates or drops databases and tables use the migration account below.
    db_user: str = "shop"
    db_password: str = "shop"
    db_migrate_user: str = "shop_migrate"
    db_migrate_password: str = "shop_migrate"
    db_name: str = Field("shop", pattern=r"^[A-Za-z0-9_]{1,64}$")
    db_pool_size: int = Field(20, ge=1, le=500)
    db_timeout_seconds: float = Field(5.0, gt=0)

    kafka_brokers: str = "127.0.0.1:9092"
    kafka_topic: str = Field("orders", min_length=1)
    kafka_product_events_topic: str = Field("product-events", min_length=1)
    kafka_order_events_topic: str = Field("order-events", min_length=1)
    kafka_dlq_topic: str = Field("orders.dlq", min_length=1)
    kafka_consumer_group: str = Field("order-service", min_length=1)
    # Copies of every topic the services create (3 on the cluster); min.insync.replicas is one
    # fewer (at least 1), so with acks=all a write survives the loss of any one broker.
    kafka_replication_factor: int = Field(1, ge=1, le=7)

    rabbitmq_host: str = "127.0.0.1"
    rabbitmq_port: int = Field(5672, ge=1, le=65535)
    rabbitmq_management_port: int = Field(15672, ge=1, le=65535)
    rabbitmq_user: str = "guest"
    rabbitmq_password: str = "guest"
    rabbitmq_vhost: str = "/"
    # An administrator of the management API, for the local stack, the tests and the bench
    # (queue depths, clean-up); the services never use it. RABBITMQ_USER is not an administrator.
    rabbitmq_admin_user: str = "shop-admin"
    rabbitmq_admin_password: str = "shop-admin"
    rabbitmq_queue: str = Field("orders", min_length=1)
    # `quorum` (the cluster): the order queue and its dead-letter queue are replicated Raft
    # queues, and a message redelivered more than RABBITMQ_DELIVERY_LIMIT times is dead-lettered.
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    rabbitmq_delivery_limit: int = Field(20, ge=1, le=10_000)

    product_service_port: int = Field(8080, ge=1, le=65535)
    order_service_port: int = Field(8081, ge=1, le=65535)
    bind_host: str = "127.0.0.1"
    # Worker processes per HTTP service: by default one per core this process may run on.
    workers: int = Field(default_factory=available_cores, ge=1, le=64)

    product_list_cache_seconds: float = Field(1.0, ge=0, le=60)
    # The bytes of pages that cache may hold per worker process; expired pages go first.
    product_list_cache_bytes: int = Field(16 * 1024 * 1024, ge=0)
    consumers_enabled: bool = True
    # The consumers in a process of their own beside the HTTP server (the other core), not on
    # its event loop.
    consumer_process: bool = True
    # That process's nice value: when both cores are busy, intake (the HTTP workers) goes first
    # and the stored orders follow; an idle machine runs it at full speed anyway.
    consumer_nice: int = Field(10, ge=0, le=19)
    # Sync orders waiting for their batch beyond this many are refused at once (503).
    sync_queue_limit: int = Field(1000, ge=1, le=100_000)
    consumer_batch_size: int = Field(500, ge=1, le=5000)
    # The most units one order may ask for (422 above it), an abuse limit.
    max_order_quantity: int = Field(1000, ge=1, le=1_000_000)
    # A customer may place ORDER_BURST orders at once, then ORDER_RATE_PER_SECOND (429 beyond;
    # per worker process; orders:admin is not limited).
    order_rate_per_second: float = Field(10.0, gt=0)
    order_burst: int = Field(20, ge=1)
    broker_deadline_seconds: float = Field(2.0, gt=0, le=30)
    outbox_batch_size: int = Field(500, ge=1, le=10_000)
    outbox_poll_seconds: float = Field(0.2, gt=0, le=60)
    # The outbox relay runs in this process. `shop serve` turns it off in the order service's
    # HTTP workers: their consumer process relays what they commit (one relay, off their loop).
    outbox_relay_enabled: bool = True
    outbox_retention_seconds: float = Field(3600.0, ge=0)  # published events kept this long
    # An Idempotency-Key is remembered this long; a retry after that is a new request.
    idempotency_key_ttl_seconds: float = Field(86_400.0, ge=60)
    max_body_bytes: int = Field(65_536, ge=1024)
    # A request's headers must have arrived this long after its first byte (or the connection
    # opening), and its body this long after its headers (408 otherwise).
    request_header_seconds: float = Field(10.0, gt=0, le=300)
    request_body_seconds: float = Field(10.0, gt=0, le=300)
    # Connections (and requests in progress) one worker process takes before answering 503.
    max_connections: int = Field(4096, ge=16)

    # Access tokens (verifier): JWTs from this issuer for this audience, verified with the keys
    # at AUTH_JWKS_URL or, without it, the PEM public key in AUTH_PUBLIC_KEY_FILE (the local
    # stack's development issuer writes it; paths are relative to the working directory).
    auth_issuer: str = Field("shop-dev", min_length=1)
    auth_audience: str = Field("shop", min_length=1)
    auth_jwks_url: str | None = None
    auth_public_key_file: str = ".stack/auth/public.pem"
    auth_signing_key_file: str = ".stack/auth/signing.pem"  # `shop token` only
    auth_leeway_seconds: float = Field(30.0, ge=0, le=300)
    auth_jwks_refresh_seconds: float = Field(60.0, ge=1)  # at most one JWKS fetch per this
    auth_timeout_seconds: float = Field(3.0, gt=0, le=30)
    auth_user_claim: str = Field("sub", min_length=1)  # the claim holding the user id
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Listening beyond loopback with the development passwords is refused unless this says so
    # (docker-compose.yml does: its ports are published on 127.0.0.1 only).
    allow_default_passwords: bool = False

    @model_validator(mode="after")
    def _no_default_passwords_beyond_loopback(self) -> Settings:
        if self.allow_default_passwords or _is_loopback(self.bind_host):
            return self
        defaults = [
            name
            for name, value in (
                ("DB_PASSWORD", self.db_password),
                ("RABBITMQ_PASSWORD", self.rabbitmq_password),
            )
            if value == type(self).model_fields[name.lower()].default
        ]
        if defaults:
            raise ValueError(
                f"BIND_HOST={self.bind_host} listens beyond this machine, but "
                f"{' and '.join(defaults)} still have their development defaults: set real "
                "passwords (or ALLOW_DEFAULT_PASSWORDS=true for a throw-away setup)"
            )
        return self

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers_have_ports(cls, value: str) -> str:
        for broker in value.split(","):
            host, _, port = broker.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @property
    def db_url(self) -> str:
        user, password = quote(self.db_user, safe=""), quote(self.db_password, safe="")
        return (
            f"mysql+asyncmy://{user}:{password}"
            f"@{self.db_host}:{self.db_port}/{self.db_name}?charset=utf8mb4"
        )

    def migration_account(self) -> Settings:
        """These settings with the migration account as DB_USER: it may create, alter and drop
        tables and databases (migrations, tests' and benchmarks' scratch tables)."""
        return self.model_copy(
            update={"db_user": self.db_migrate_user, "db_password": self.db_migrate_password}
        )

    @property
    def migrate_db_url(self) -> str:
        return self.migration_account().db_url

    @property
    def rabbitmq_url(self) -> str:
        vhost = "%2F" if self.rabbitmq_vhost == "/" else self.rabbitmq_vhost
        return (
            f"amqp://{self.rabbitmq_user}:{self.rabbitmq_password}"
            f"@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation failures into one message naming each setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
