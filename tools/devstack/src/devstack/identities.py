"""Who each process is on each server of a local stack: its accounts, their generated
passwords, and the local certificate authority whose server certificate every server presents.

Made once per stack directory by `ensure()` (`devstack up` calls it) under `<stack>/identities/`,
readable by this user only, and never committed. Each service is started with its own
identity as environment variables (`service_env`); tests, the bench and the stack's tools read
them with `settings()`.

The accounts, one per role on each server (the servers' provisioning makes them):
- MariaDB: `shop_products` and `shop_orders` (rows of their own tables only; the order service
  may change `products.stock` and nothing else of the catalogue) and `shop_migrate` (tables).
- Kafka (SASL/SCRAM-SHA-512 over TLS): `products` and `orders`, each with ACLs on the topics it
  writes and the group it reads, and `admin` (the broker's own and the stack's tools).
- RabbitMQ (over TLS): `shop-intake` (publishes order commands), `shop-consumer` (reads the
  order queues) and `shop-admin` (the management API, for the stack and the tests).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .common import stack_dir

Service = Literal["products", "orders"]
SERVICES: tuple[Service, ...] = ("products", "orders")
CERT_DAYS = 825  # the most a TLS client (Apple's, Chrome's policy) accepts for a server
NAMES_FILE = "passwords.json"


def directory() -> Path:
    path = stack_dir() / "identities"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by this user only, replacing it as a whole."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    partial.replace(path)


def password(account: str) -> str:
    """The generated password of `account` (made on first use, then kept)."""
    path = directory() / NAMES_FILE
    known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    if account not in known:
        known[account] = secrets.token_urlsafe(24)
        _write_private(path, json.dumps(known, indent=2, sort_keys=True).encode())
    return known[account]


@dataclass(frozen=True)
class Tls:
    """The local CA's certificate (what clients trust) and the servers' certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def tls() -> Tls:
    """The local CA and a server certificate for localhost, 127.0.0.1 and ::1 (made once)."""
    base = directory()
    found = Tls(base / "ca.pem", base / "server.pem", base / "server-key.pem")
    if not all(p.is_file() for p in (found.ca_file, found.cert_file, found.key_file)):
        _make_tls(found)
    return found


_CA_USAGE = dict.fromkeys(
    ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
     "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
    False,
) | {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}  # fmt: skip


def _make_tls(where: Tls) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop local stack CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(**_CA_USAGE),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(where.ca_file, ca.public_bytes(pem))
    _write_private(where.cert_file, server.public_bytes(pem))
    # PKCS#8, unencrypted: the form MariaDB, RabbitMQ (Erlang) and Kafka's PEM key store read.
    _write_private(
        where.key_file,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def ensure() -> None:
    """Make the stack's CA, server certificate and every account's password if missing."""
    tls()
    names()


RABBITMQ_INTAKE, RABBITMQ_CONSUMER, RABBITMQ_ADMIN = "shop-intake", "shop-consumer", "shop-admin"


def _rabbitmq_env(service: Service) -> dict[str, str]:
    """The order service's two RabbitMQ accounts (its HTTP workers publish as the intake, its
    consumer process reads as the consumer) and the CA (TLS); the product service gets none."""
    if service != "orders":
        return {}
    return {
        "RABBITMQ_USER": RABBITMQ_INTAKE,
        "RABBITMQ_PASSWORD": password(f"rabbitmq:{RABBITMQ_INTAKE}"),
        "RABBITMQ_CONSUMER_USER": RABBITMQ_CONSUMER,
        "RABBITMQ_CONSUMER_PASSWORD": password(f"rabbitmq:{RABBITMQ_CONSUMER}"),
        "RABBITMQ_CA_FILE": str(tls().ca_file),
    }


def service_env(service: Service) -> dict[str, str]:
    """The environment that gives `service` its own identity on every server."""
    ca = str(tls().ca_file)
    db_user = f"shop_{service}"
    env = {"DB_USER": db_user, "DB_PASSWORD": password(f"db:{db_user}"), "DB_CA_FILE": ca}
    return env | _rabbitmq_env(service) | kafka_env(service)


def tools_env() -> dict[str, str]:
    """What the stack's own tools, the tests and the bench use beside the order service's
    identity, and no service gets: the administrators' and the migration account's."""
    env = {"DB_MIGRATE_USER": "shop_migrate", "DB_MIGRATE_PASSWORD": password("db:shop_migrate")}
    env |= {"RABBITMQ_ADMIN_PASSWORD": password(f"rabbitmq:{RABBITMQ_ADMIN}")}
    return env | kafka_admin_env()


def kafka_env(principal: str) -> dict[str, str]:
    """Kafka as `principal`: SASL/SCRAM-SHA-512 over TLS, trusting the stack's CA (the broker's
    ACLs decide what it may do: devstack.kafka.acls)."""
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_USER": principal,
        "KAFKA_PASSWORD": password(f"kafka:{principal}"),
        "KAFKA_CA_FILE": str(tls().ca_file),
    }


def kafka_admin_env() -> dict[str, str]:
    """Kafka's super user (the broker's own identity), for the stack's tools, tests and bench."""
    return {"KAFKA_ADMIN_USER": "admin", "KAFKA_ADMIN_PASSWORD": password("kafka:admin")}


def names() -> frozenset[str]:
    """Every setting (flat name, lower case) an identity sets, a service's or the tools'."""
    found = {*tools_env()}
    for service in SERVICES:
        found |= service_env(service).keys()
    return frozenset(name.lower() for name in found)


def settings(service: Service = "orders") -> dict[str, str]:
    """The order service's identity and the tools' (`tools_env`) by flat setting name (lower
    case), or nothing before the stack has been set up (`ensure`): what `load_stack_settings`
    gives tests and tools by default."""
    if not (stack_dir() / "identities" / NAMES_FILE).is_file():
        return {}
    env = service_env(service) | tools_env()
    return {name.lower(): value for name, value in env.items()}
