"""The compose deployment's identities, made at first start by the `secrets` service: a random
password for every account, a local certificate authority, and a server certificate for each
server (MySQL, Kafka, RabbitMQ). Nothing of it is committed or baked into an image.

Everything is kept in the `secrets` volume (MASTER, mounted by this service only: it alone
holds the CA's key), so passwords and certificates survive `docker compose up` after `down`;
`down -v` forgets them with the data they protect. Then each holder (a container, or a few of
one kind) gets a volume of its own with only what it needs (HOLDERS): a service its own
passwords and the CA certificate, a server its certificate, its key and the passwords it sets,
a set-up step the administrator's password and the accounts it makes. docker-compose.yml mounts
each holder's volume into that holder only, at /run/shop-secrets.

Files are readable by every user of the container that mounts them (the servers read them as
their own users, which this service, not root, cannot chown to); no other container sees them.

    python identities.py MASTER OUT      # OUT/<holder>/ for every holder in HOLDERS
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Every account with a generated password, by the name of its file in MASTER.
PASSWORDS = (
    "db_migrate",  # MySQL shop_migrate: the schema, and the grants to the services' roles
    "db_products",  # MySQL shop_products (role shop_products_rights)
    "db_orders",  # MySQL shop_orders (role shop_orders_rights)
    "kafka_admin",  # Kafka's super user: the broker itself (inter-broker) and kafka-access
    "kafka_controller",  # Kafka's controller listener (SASL PLAIN), the broker only
    "kafka_products",  # Kafka principal `products`
    "kafka_orders",  # Kafka principal `orders`
    "rabbitmq_admin",  # RabbitMQ's administrator (shop-admin), for rabbitmq-user
    "rabbitmq_intake",  # RabbitMQ shop-intake: the order service's HTTP workers
    "rabbitmq_consumer",  # RabbitMQ shop-consumer: the order service's consumers
)
SERVERS = ("mysql", "kafka", "rabbitmq")  # each one's certificate names it (its compose host)
CERT_DAYS = 825

# What each holder's volume holds: {file name there: file name in MASTER}. Every holder also
# gets the CA's certificate as ca.pem; a server its certificate and key (server.pem,
# server-key.pem).
HOLDERS: dict[str, dict[str, str]] = {
    "mysql": {  # its init script makes the three accounts with these passwords
        "db_migrate_password": "db_migrate",
        "db_products_password": "db_products",
        "db_orders_password": "db_orders",
    },
    "kafka": {
        "kafka_admin_password": "kafka_admin",
        "kafka_controller_password": "kafka_controller",
    },
    "rabbitmq": {"rabbitmq_admin_password": "rabbitmq_admin"},
    "kafka-access": {  # sets the services' SCRAM credentials and ACLs, as the administrator
        "kafka_admin_password": "kafka_admin",
        "kafka_products_password": "kafka_products",
        "kafka_orders_password": "kafka_orders",
    },
    "rabbitmq-user": {  # makes the order service's two users, as the administrator
        "rabbitmq_admin_password": "rabbitmq_admin",
        "rabbitmq_intake_password": "rabbitmq_intake",
        "rabbitmq_consumer_password": "rabbitmq_consumer",
    },
    "migrate": {"db_migrate_password": "db_migrate"},
    "products": {"db_password": "db_products", "kafka_password": "kafka_products"},
    "orders": {
        "db_password": "db_orders",
        "kafka_password": "kafka_orders",
        "rabbitmq_password": "rabbitmq_intake",
        "rabbitmq_consumer_password": "rabbitmq_consumer",
    },
}


def _write(path: Path, data: bytes, *, keep: bool = False) -> None:
    """`data` into `path`, whole or not at all; an existing file is kept when `keep`."""
    if keep and path.exists():
        return
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    partial.write_bytes(data)
    partial.chmod(0o444)
    partial.replace(path)


def _passwords(master: Path) -> None:
    for name in PASSWORDS:
        _write(master / name, secrets.token_urlsafe(24).encode() + b"\n", keep=True)


_CA_USAGE = dict.fromkeys(
    ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
     "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
    False,
) | {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}  # fmt: skip


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8, unencrypted: what MySQL, MariaDB, RabbitMQ (Erlang) and Kafka's PEM key store read.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _authority(master: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA (EC P-256), made once."""
    cert_file, key_file = master / "ca.pem", master / "ca-key.pem"
    if cert_file.exists() and key_file.exists():
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_file.read_bytes()), key
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shop compose CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(**_CA_USAGE), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(key_file, _pem_key(key))
    _write(cert_file, ca.public_bytes(serialization.Encoding.PEM))
    return ca, key


def _server(
    master: Path, server: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    """`server`'s certificate, made once: for its compose host name (what the containers
    connect to and check) and for localhost, 127.0.0.1 and ::1 (the ports published on the
    host, and clients inside its own container)."""
    cert_file, key_file = master / f"{server}.pem", master / f"{server}-key.pem"
    if cert_file.exists() and key_file.exists():
        return
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName(server),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_file, _pem_key(key))
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM))


def _hand_out(master: Path, out: Path) -> None:
    """Each holder's files into its own volume (OUT/<holder>), replaced every time so that they
    match MASTER."""
    for holder, files in HOLDERS.items():
        target = out / holder
        wanted = {"ca.pem": "ca.pem", **files}
        if holder in SERVERS:
            wanted |= {"server.pem": f"{holder}.pem", "server-key.pem": f"{holder}-key.pem"}
        for name, source in wanted.items():
            _write(target / name, (master / source).read_bytes())
        print(f"{holder}: {', '.join(sorted(wanted))}")


def main(master: Path, out: Path) -> None:
    _passwords(master)
    ca, ca_key = _authority(master)
    for server in SERVERS:
        _server(master, server, ca, ca_key)
    _hand_out(master, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
