"""Kafka's accounts and ACLs for docker-compose.yml, as its administrator (`kafka-access`, once
per `docker compose up`, idempotent): the SCRAM-SHA-512 credentials of the services' principals
`orders` and `products` (their passwords from the files the `secrets` service wrote, set again
every time), and their ACLs on the topics and the group the settings name
(`shop.messaging.kafka.acls`: the same list `make up`'s stack applies). Nobody else gets in: no
listener takes a client without an account, and the authorizer allows nothing no ACL allows.

Reads the settings as the services do (KAFKA_BROKERS, KAFKA_SECURITY_PROTOCOL, KAFKA_USER and
KAFKA_PASSWORD(_FILE) the administrator's, KAFKA_CA_FILE, the topic and group names), and the
principals' passwords from KAFKA_ORDERS_PASSWORD_FILE and KAFKA_PRODUCTS_PASSWORD_FILE.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
)
from confluent_kafka.admin import UserScramCredentialUpsertion as Upsert

from shop.messaging.kafka import ORDERS_PRINCIPAL, PRODUCTS_PRINCIPAL, acls, client_config
from shop.settings import load_settings

ITERATIONS = 8192
SECONDS = 120.0  # a broker that answers its health check may not answer its controller yet


def main() -> None:
    kafka = load_settings().kafka
    if not kafka.security_protocol.startswith("SASL_"):
        raise SystemExit("KAFKA_SECURITY_PROTOCOL must be SASL_SSL: there are no accounts without")
    passwords = {
        principal: Path(os.environ[f"KAFKA_{principal.upper()}_PASSWORD_FILE"]).read_text().strip()
        for principal in (ORDERS_PRINCIPAL, PRODUCTS_PRINCIPAL)
    }
    config: dict[str, Any] = {**client_config(kafka), "error_cb": lambda _err: None}
    admin = AdminClient(config)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        Upsert(name, info, password.encode()) for name, password in passwords.items()
    ]
    bindings = acls(kafka)
    deadline = time.monotonic() + SECONDS
    while True:
        try:
            for futures in (
                admin.alter_user_scram_credentials(upserts, request_timeout=15),
                admin.create_acls(bindings, request_timeout=15),
            ):
                for future in futures.values():
                    future.result(timeout=20)
            break
        except Exception as exc:  # KafkaException and timeouts alike: again, until the deadline
            if time.monotonic() >= deadline:
                raise SystemExit(
                    f"Kafka's principals and ACLs not set within {SECONDS:.0f} s: {exc}"
                ) from None
            print(f"not yet: {exc}", file=sys.stderr)
            time.sleep(2)
    print(f"Kafka principals {', '.join(passwords)}: SCRAM-SHA-512 credentials set")
    for binding in bindings:
        what = f"{binding.operation} {binding.restype} {binding.name}"
        print(f"ACL: {binding.principal} {what}")


if __name__ == "__main__":
    main()
