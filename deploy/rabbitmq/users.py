"""The order service's RabbitMQ users for docker-compose.yml, through the management API (over
TLS) as the administrator: `rabbitmq-user`, once per `docker compose up`, idempotent.

- RABBITMQ_USER (`shop-intake`, the order service's HTTP workers) and RABBITMQ_CONSUMER_USER
  (`shop-consumer`, its consumers): no tags (not administrators, no management API), with
  their passwords from files, and their roles' permission patterns on RABBITMQ_VHOST for
  RABBITMQ_QUEUE (`shop.messaging.rabbitmq.Topology.permissions`, as `make up`'s stack).
- RabbitMQ's own `guest` is deleted (the images make it only without RABBITMQ_DEFAULT_USER).

Reads the settings as the services do (RABBITMQ_HOST, RABBITMQ_VHOST, RABBITMQ_QUEUE,
RABBITMQ_CA_FILE, the two users and their `*_PASSWORD_FILE`s), and RABBITMQ_MANAGEMENT_PORT,
RABBITMQ_ADMIN_USER and RABBITMQ_ADMIN_PASSWORD_FILE.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from shop.messaging.rabbitmq import Role, Topology
from shop.settings import load_settings

TIMEOUT_SECONDS = 5.0
ATTEMPTS = 45  # one per 2 s: the management listener opens late in a node's boot


def main() -> None:
    settings = load_settings().rabbitmq
    if settings.ca_file is None or settings.consumer_user is None:
        raise SystemExit("set RABBITMQ_CA_FILE and RABBITMQ_CONSUMER_USER (and its password)")
    admin_user = os.environ["RABBITMQ_ADMIN_USER"]
    admin_password = Path(os.environ["RABBITMQ_ADMIN_PASSWORD_FILE"]).read_text().strip()
    users: dict[str, tuple[str, Role]] = {
        settings.user: (settings.password, "intake"),
        settings.consumer_user: (settings.consumer_password or "", "consumer"),
    }
    if admin_user in users or len(users) != 2:
        raise SystemExit("the intake, consumer and admin users must be three different users")
    base = f"https://{settings.host}:{os.environ.get('RABBITMQ_MANAGEMENT_PORT', '15672')}/api"
    context = ssl.create_default_context(cafile=settings.ca_file)
    authorization = "Basic " + base64.b64encode(f"{admin_user}:{admin_password}".encode()).decode()
    topology = Topology(settings)
    vhost = urllib.parse.quote(settings.vhost, safe="")

    def call(method: str, path: str, body: object = None, *, missing_ok: bool = False) -> None:
        request = urllib.request.Request(  # noqa: S310 - https:// with the CA above
            base + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": authorization, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context):  # noqa: S310
                pass
        except urllib.error.HTTPError as answer:
            if not (missing_ok and answer.code == 404):
                raise

    for attempt in range(1, ATTEMPTS + 1):
        try:
            call("PUT", f"/vhosts/{vhost}", {})
            for user, (password, role) in users.items():
                quoted = urllib.parse.quote(user, safe="")
                call("PUT", f"/users/{quoted}", {"password": password, "tags": ""})
                call("PUT", f"/permissions/{vhost}/{quoted}", topology.permissions(role)._asdict())
            call("DELETE", "/users/guest", missing_ok=True)
        except urllib.error.HTTPError as refused:
            raise SystemExit(
                f"the management API refused: {refused.code} {refused.reason}"
            ) from None
        except OSError as unreachable:  # not listening yet (TLS errors are OSErrors too)
            print(f"attempt {attempt}/{ATTEMPTS}: {unreachable}", file=sys.stderr)
            time.sleep(2)
            continue
        for user, (_, role) in users.items():
            print(f"RabbitMQ user {user!r}: no tags, {role}: {topology.permissions(role)}")
        print("RabbitMQ user 'guest': deleted")
        return
    raise SystemExit(f"the management API at {base} did not answer")


if __name__ == "__main__":
    main()
