"""Write the compose deployment's passwords, once: one file per account in the given directory
(the `secrets` volume), each the value of its environment variable if set, otherwise a random
one. A file that exists is kept, so passwords survive `docker compose up` after `down`; `down -v`
forgets them with the data they protect.

Files are readable by every container that mounts the volume (the database and broker images
read them as their own users); nothing else sees the volume. The standard library only.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ACCOUNTS = ("db_password", "db_migrate_password", "rabbitmq_password", "rabbitmq_admin_password")


def write(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ACCOUNTS:
        path = directory / name
        if path.exists():
            print(f"{name}: kept")
            continue
        given = os.environ.get(name.upper(), "")
        value = given or secrets.token_urlsafe(24)
        partial = path.with_suffix(".partial")
        partial.write_text(value + "\n")
        partial.chmod(0o444)
        partial.rename(path)  # whole or absent, never half-written
        print(f"{name}: {'from ' + name.upper() if given else 'random'}")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
