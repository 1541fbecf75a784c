"""The test run's token issuer, and the tokens every protected endpoint must refuse."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.access import dev_issuer as tokens
from shop.access.verifier import Authenticator, StaticKey
from shop.settings import Auth

ISSUER = "shop-test"
AUDIENCE = "shop"


def _pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class Issuer:
    """A signing key the services under test trust, and a second one they do not."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self._stranger = ec.generate_private_key(ec.SECP256R1())
        self.signing_pem = _pem(self._key)
        self.public_pem = _public_pem(self._key)

    def write(self, directory: Path) -> tuple[Path, Path]:
        """(signing key, public key) files in `directory`."""
        signing, public = directory / "signing.pem", directory / "public.pem"
        signing.write_bytes(self.signing_pem)
        signing.chmod(0o600)
        public.write_bytes(self.public_pem)
        return signing, public

    def authenticator(self) -> Authenticator:
        return Authenticator(
            StaticKey(self.public_pem), Auth(issuer=ISSUER, audience=AUDIENCE, leeway_seconds=5)
        )

    def token(
        self,
        subject: str | int,
        scopes: Iterable[str] = (),
        *,
        ttl: float = 3600,
        signing_pem: bytes | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        claims = {"iss": ISSUER, "aud": AUDIENCE, **claims}
        issuer, audience = claims.pop("iss"), claims.pop("aud")
        return tokens.issue(
            signing_pem or self.signing_pem,
            issuer=issuer,
            audience=audience,
            subject=str(subject),
            scopes=scopes,
            ttl_seconds=ttl,
            headers=headers,
            **claims,
        )

    def bearer(self, subject: str | int, scopes: Iterable[str] = (), **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject, scopes, **kw)}"}

    def refused(self, subject: str | int, scopes: Iterable[str]) -> dict[str, dict[str, str]]:
        """For the subject and scopes a request needs, each way a token must be refused (401),
        as request headers; the empty dict is no token at all."""
        good = self.token(subject, scopes)
        head, body, signature = good.split(".")
        tampered = signature[:-4] + ("AAAA" if not signature.endswith("AAAA") else "BBBB")
        now = int(time.time())
        return {
            "no token": {},
            "expired": self.bearer(subject, scopes, exp=now - 3600, nbf=now - 7200),
            "another audience": self.bearer(subject, scopes, aud="not-the-shop"),
            "another issuer": self.bearer(subject, scopes, iss="https://elsewhere.example"),
            "alg none": _header(_unsigned(head, body, "none")),
            "HMAC with the public key": _header(_hmac(head, body, self.public_pem)),
            "tampered signature": _header(f"{head}.{body}.{tampered}"),
            "unknown kid": self.bearer(subject, scopes, headers={"kid": "not-a-known-key"}),
            "signed by another key": self.bearer(
                subject, scopes, signing_pem=_pem(self._stranger), headers={"kid": _kid(head)}
            ),
            "not a bearer token": {"Authorization": f"Basic {good}"},
            "an OIDC ID token": _header(self.id_token(subject)),
            "no typ in the header": self.bearer(subject, scopes, headers={"typ": ""}),
            "a user id with leading zeros": self.bearer("007", scopes),
        }

    def id_token(self, subject: str | int, **claims: Any) -> str:
        """An OpenID Connect ID token for the shop's audience, signed with the trusted key, as
        a provider issues it beside an access token (header typ JWT, `nonce`, `azp`)."""
        oidc: dict[str, Any] = {"nonce": "n-0S6_WzA2Mj", "azp": "shop-web", "at_hash": "77QmUP"}
        return self.token(subject, headers={"typ": "JWT"}, **(oidc | claims))


def _header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _hmac(head: str, body: str, secret: bytes) -> str:
    """The token re-signed with HS256, the public key as the secret (the classic confusion;
    PyJWT will not make one, so it is made by hand)."""
    header = _b64(json.dumps({**_unb64(head), "alg": "HS256"}).encode())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


def _kid(head: str) -> str:
    return str(_unb64(head)["kid"])


def _unsigned(head: str, body: str, alg: str) -> str:
    header = {**_unb64(head), "alg": alg}
    return f"{_b64(json.dumps(header).encode())}.{body}."
