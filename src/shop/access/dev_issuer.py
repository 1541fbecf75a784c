"""The development issuer: a signing key in `.stack/auth/` and `shop token` to mint tokens.

A production deployment points AUTH_JWKS_URL at its identity provider and never uses this;
the services only ever see public keys.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.access.verifier import algorithm_of, thumbprint
from shop.settings import Settings


def ensure_dev_key(settings: Settings) -> bool:
    """Create the development signing key (mode 0600) and its public key unless they exist;
    True if they were created."""
    signing = Path(settings.auth.signing_key_file)
    public = Path(settings.auth.public_key_file)
    if signing.exists() and public.exists():
        return False
    for directory in {signing.parent, public.parent}:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
    key = Ed25519PrivateKey.generate()  # the cheapest of the accepted signatures to verify
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signing.touch(mode=0o600)  # created readable by its owner only, before the key is in it
    signing.write_bytes(private_pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return True


def issue(
    signing_key: bytes,
    *,
    issuer: str,
    audience: str,
    subject: str,
    scopes: Iterable[str] = (),
    ttl_seconds: float = 3600,
    headers: Mapping[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed access token (RFC 9068 claims) for `subject`, signed with the PEM private key
    `signing_key`; `claims` add to or replace the standard ones."""
    key = serialization.load_pem_private_key(signing_key, password=None)
    now = int(time.time())
    payload = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl_seconds),
        "jti": str(uuid.uuid4()),
        "client_id": "shop-dev",
        "scope": " ".join(scopes),
        **claims,
    }
    header = {"typ": "at+jwt", "kid": thumbprint(key.public_key()), **(headers or {})}
    algorithm = algorithm_of(key.public_key())  # (known: `thumbprint` refuses any other key)
    return jwt.encode(payload, key, algorithm=algorithm, headers=header)  # type: ignore[arg-type]


def dev_token(
    settings: Settings, *, subject: str, scopes: Iterable[str], ttl_seconds: float
) -> str:
    """A token from the development issuer whose key `ensure_dev_key` made."""
    return issue(
        Path(settings.auth.signing_key_file).read_bytes(),
        issuer=settings.auth.issuer,
        audience=settings.auth.audience,
        subject=subject,
        scopes=scopes,
        ttl_seconds=ttl_seconds,
    )
