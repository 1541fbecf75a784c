"""Create or update the application's RabbitMQ user through the management API, as an
administrator: no tags (so no management access and not an administrator), all rights on the
application's vhost only. Idempotent; run once by docker-compose.yml's `rabbitmq-user` service.

Reads RABBITMQ_HOST, RABBITMQ_MANAGEMENT_PORT (15672), RABBITMQ_VHOST (/), RABBITMQ_ADMIN_USER,
RABBITMQ_ADMIN_PASSWORD, RABBITMQ_USER, RABBITMQ_PASSWORD; a password may instead be in the file
that <NAME>_FILE names. The standard library only, so that it runs in any image with Python.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_SECONDS = 5.0
ATTEMPTS = 30  # one per 2 s: the management listener opens late in a node's boot


def _put(base: str, path: str, body: dict[str, str], authorization: str) -> None:
    if not base.startswith("http://"):
        raise ValueError(f"expected an http:// URL, got {base!r}")
    request = urllib.request.Request(  # noqa: S310 - http:// checked above
        base + path,
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": authorization, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS):  # noqa: S310
        pass


def provision(env: dict[str, str]) -> None:
    user, vhost = env["RABBITMQ_USER"], env.get("RABBITMQ_VHOST", "/")
    if user == env["RABBITMQ_ADMIN_USER"]:
        raise SystemExit("RABBITMQ_USER and RABBITMQ_ADMIN_USER must name different users")
    host = env.get("RABBITMQ_HOST", "127.0.0.1")
    base = f"http://{host}:{env.get('RABBITMQ_MANAGEMENT_PORT', '15672')}/api"
    admin = f"{env['RABBITMQ_ADMIN_USER']}:{env['RABBITMQ_ADMIN_PASSWORD']}".encode()
    authorization = "Basic " + base64.b64encode(admin).decode()
    quoted_user, quoted_vhost = (urllib.parse.quote(x, safe="") for x in (user, vhost))
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _put(base, f"/vhosts/{quoted_vhost}", {}, authorization)
            _put(
                base,
                f"/users/{quoted_user}",
                {"password": env["RABBITMQ_PASSWORD"], "tags": ""},
                authorization,
            )
            _put(
                base,
                f"/permissions/{quoted_vhost}/{quoted_user}",
                {"configure": ".*", "write": ".*", "read": ".*"},
                authorization,
            )
        except urllib.error.HTTPError as refused:
            raise SystemExit(
                f"the management API refused: {refused.code} {refused.reason}"
            ) from None
        except OSError as unreachable:  # not listening yet
            print(f"attempt {attempt}/{ATTEMPTS}: {unreachable}", file=sys.stderr)
            time.sleep(2)
            continue
        print(f"RabbitMQ user {user!r}: no tags, all rights on vhost {vhost!r}")
        return
    raise SystemExit(f"the management API at {base} did not answer")


def _with_files(env: dict[str, str]) -> dict[str, str]:
    """`env` with each password whose <NAME>_FILE is set read from that file."""
    for name in ("RABBITMQ_PASSWORD", "RABBITMQ_ADMIN_PASSWORD"):
        path = env.get(f"{name}_FILE")
        if path and name not in env:
            with open(path, encoding="utf-8") as secret:
                env[name] = secret.read().removesuffix("\n")
    return env


if __name__ == "__main__":
    provision(_with_files(dict(os.environ)))
