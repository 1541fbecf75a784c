"""Who calls, and what they may do: OAuth 2.0 bearer access tokens (RFC 6750) that are JWTs
(RFC 9068), verified with PyJWT.

Only asymmetric signatures are accepted (RS256, ES256, EdDSA): a token whose header says `none`
or an HMAC algorithm is refused before any key is looked at, so a public key can never serve as
an HMAC secret. The header's `typ` must be `at+jwt` (RFC 9068 section 4) unless
AUTH_REQUIRE_AT_JWT=false, so that an OIDC ID token for the same audience is not taken for an
access token. `iss` and `aud` must match the settings, and the client the token was issued to
(`client_id`, else `azp`) must be one of AUTH_ALLOWED_CLIENTS when that lists any; `exp` is
required and `exp`/`nbf` are checked with a small leeway. Scopes are read from `scope` and
`scp`; a role or group claim (AUTH_ADMIN_CLAIM) holding AUTH_ADMIN_ROLE grants what the scope
orders:admin grants. A user id (`sub`, or AUTH_USER_CLAIM) that reads as a number must be
written canonically. Keys come from a JWKS URL (`Jwks`: https only, kept current by a
supervised worker within the response's max-age, fetched at once for an unknown `kid` at most
once per AUTH_JWKS_REFRESH_SECONDS) or from a PEM public key file.

A verified token is remembered until it expires (bounded by the bytes of the tokens held, the
least recently used forgotten first), so a client that sends the same token on every request
pays for one signature check; when a key stops being trusted, every remembered token is
forgotten, so none signed with that key passes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jwt
from cachetools import TLRUCache
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import Depends, Request
from fastapi.security import HTTPBearer, SecurityScopes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.utils import base64url_encode
from starlette.types import Scope

from shop.clock import SYSTEM, Clock
from shop.errors import DomainError
from shop.fields import MAX_ID
from shop.settings import Auth, ConfigError, Settings, https_url

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256", "EdDSA")
# Lists, reads and cancels any order, and places orders for any user; the role or group named
# by AUTH_ADMIN_CLAIM and AUTH_ADMIN_ROLE grants it too.
ADMIN_SCOPE = "orders:admin"
SCHEME = "Bearer"
MAX_TOKEN_LENGTH = 8 * 1024  # characters; so a token's subject is never longer


class Unauthorized(DomainError):
    """401: no token, or one that does not verify (RFC 6750 section 3.1)."""

    status = 401
    title = "Unauthorized"
    type_ = "/problems/unauthorized"

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        challenge = SCHEME
        if error is not None:  # no token at all: the bare challenge, no error code
            challenge += f' error="{error}", error_description="{detail}"'
        self.headers["WWW-Authenticate"] = challenge


class Forbidden(DomainError):
    """403: a valid token without the scope (or the user) the request needs."""

    status = 403
    title = "Forbidden"
    type_ = "/problems/forbidden"

    def __init__(self, detail: str, *, scope: str | None = None) -> None:
        super().__init__(detail)
        challenge = f'{SCHEME} error="insufficient_scope", error_description="{detail}"'
        if scope is not None:
            challenge += f', scope="{scope}"'
        self.headers["WWW-Authenticate"] = challenge


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a token names: its subject, the user id (when it is one), its scopes."""

    subject: str
    user_id: int | None
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"This needs the scope {scope}.", scope=scope)

    def customer(self) -> int:
        """The user id this principal acts as; 403 if the token names no user."""
        if self.user_id is None:
            raise Forbidden("This token names no customer (its subject is not a user id).")
        return self.user_id


class StaticKey:
    """One public key (PEM, from AUTH_PUBLIC_KEY_FILE); its `kid` is its RFC 7638 thumbprint.
    A token that names another kid is refused; one that names none is checked with this key.

    It and `Jwks` are the `KeySource`s: `key(kid)` is the key for `kid` (Unauthorized if there
    is none), `run(stopping)` keeps the keys current until `stopping` is set (a supervised
    worker; at once if they never change), `watch(forget)` has `forget()` called whenever a key
    stops being trusted."""

    def __init__(self, pem: bytes) -> None:
        self._key = load_pem_public_key(pem)
        self.kid = thumbprint(self._key)

    async def key(self, kid: str | None) -> Any:
        if kid is not None and kid != self.kid:
            raise Unauthorized("The token's key id is not known.")
        return self._key

    async def run(self, stopping: asyncio.Event) -> None:
        return None  # read once: the file's key for the life of the process

    def watch(self, forget: Callable[[], None]) -> None:
        return None


class Fetched(NamedTuple):
    """A JWKS document, and how long its response said it may be kept (Cache-Control; None if
    it said nothing)."""

    document: Any
    max_age: float | None


class Jwks:
    """Keys from a JWKS document (RFC 7517); `download` fetches it (blocking, so called in a
    worker thread; by default an `HttpsDownload` of `url`).

    `run`, a supervised worker, fetches the document again once it is older than its
    response's Cache-Control max-age (AUTH_JWKS_DEFAULT_MAX_AGE_SECONDS when it has none), at
    most AUTH_JWKS_MAX_AGE_SECONDS and, short of that, at least AUTH_JWKS_REFRESH_SECONDS: a key
    the provider removed is refused within that time. A fetch that fails keeps the keys there
    were and is tried again after AUTH_JWKS_REFRESH_SECONDS. A token naming an unknown `kid`
    makes a fetch at once if none was made in the last AUTH_JWKS_REFRESH_SECONDS (so unknown
    ids cannot make the service hammer the identity provider). Whoever `watch`es is told when a
    key stops being trusted (removed, or another key under its `kid`).
    """

    def __init__(
        self,
        url: str,
        auth: Auth,
        *,
        clock: Clock = SYSTEM,
        download: Callable[[], Fetched] | None = None,
    ) -> None:
        self._url = url
        self._download = download or HttpsDownload(url, auth)
        self._auth = auth
        self._clock = clock
        self._now = clock.monotonic
        self._keys: dict[str | None, Any] = {}
        self._published: list[dict[str, Any]] = []  # the JWKs behind the keys, to see changes
        self._fetched_at: float | None = None
        self._fresh_until = -math.inf  # fetched again from then on
        self._lock = asyncio.Lock()
        self._watchers: list[Callable[[], None]] = []

    async def key(self, kid: str | None) -> Any:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            since = None if self._fetched_at is None else self._now() - self._fetched_at
            due = since is None or since >= self._auth.jwks_refresh_seconds
            if kid not in self._keys and due:
                await self._fetch()
        if kid not in self._keys:
            raise Unauthorized("The token's key id is not known.")
        return self._keys[kid]

    def watch(self, forget: Callable[[], None]) -> None:
        self._watchers.append(forget)

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch the keys now, and again whenever they are due, until `stopping` is set."""
        while not stopping.is_set():
            wait = self._fresh_until - self._now()
            if wait > 0:
                await self._clock.sleep(wait, stopping)
                continue
            async with self._lock:
                if self._fresh_until <= self._now():  # (not fetched for a kid meanwhile)
                    with contextlib.suppress(Unauthorized):  # logged; the keys there were stay
                        await self._fetch()

    async def _fetch(self) -> None:
        now = self._fetched_at = self._now()
        self._fresh_until = now + self._auth.jwks_refresh_seconds  # if this fetch fails
        try:
            # The thread may outlive this deadline, until its socket's own timeouts end it.
            async with asyncio.timeout(self._auth.timeout_seconds):
                fetched = await asyncio.to_thread(self._download)
            published = _signature_keys(fetched.document)
        except Exception as exc:  # the IdP is down or answers nonsense: keep the keys we have
            log.warning("the signing keys at %s could not be fetched: %r", self._url, exc)
            raise Unauthorized("The signing keys could not be fetched; retry shortly.") from exc
        self._fresh_until = now + self._lifetime(fetched.max_age)
        # Withdrawn: a key no longer published (gone, or another key under its kid). A key
        # added is not (nor a single key's also serving tokens without a kid no longer).
        jwks = [jwk for jwk, _key in published.values()]
        withdrawn = any(jwk not in jwks for jwk in self._published)
        self._published = jwks
        self._keys = {kid: key for kid, (_jwk, key) in published.items()}
        if withdrawn:
            log.info("a signing key at %s was withdrawn: verified tokens are forgotten", self._url)
            for forget in self._watchers:
                forget()

    def _lifetime(self, max_age: float | None) -> float:
        """How long a fetched key set is used before it is fetched again."""
        auth = self._auth
        wanted = auth.jwks_default_max_age_seconds if max_age is None else max_age
        return min(auth.jwks_max_age_seconds, max(auth.jwks_refresh_seconds, wanted))


KeySource = StaticKey | Jwks


def _signature_keys(document: Any) -> dict[str | None, tuple[dict[str, Any], Any]]:
    """A JWK set's signature keys of the accepted algorithms by `kid`, each as its JWK and its
    public key (keys for encryption or other algorithms are left out; a set that has none is a
    valid, empty one). A set with one key also serves tokens that name no kid. ValueError if
    `document` is not a JWK set."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JWK set (an object with a "keys" list)')
    found: dict[str | None, tuple[dict[str, Any], Any]] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(jwk)
        except jwt.PyJWTError:  # a kind of key PyJWT does not know: not ours either
            continue
        if key.algorithm_name in ALGORITHMS:
            found[key.key_id] = (jwk, key.key)
    if len(found) == 1:
        found[None] = next(iter(found.values()))
    return found


def _max_age(cache_control: str | None) -> float | None:
    """How long a response may be kept by its Cache-Control header (RFC 9111 section 5.2.2):
    0 for no-store or no-cache, else its max-age; None if it says neither."""
    max_age = None
    for directive in (cache_control or "").split(","):
        name, _, value = directive.partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return 0.0
        value = value.strip().strip('"')
        if name == "max-age" and max_age is None and value.isascii() and value.isdigit():
            max_age = float(value)
    return max_age


class HttpsDownload:
    """GET a JWKS document over HTTPS only, trusting AUTH_JWKS_CA_FILE's certificates (or the
    system's), without following redirects (the keys come from the configured URL or not at
    all), within AUTH_TIMEOUT_SECONDS, and at most 1 MB of it. Blocking: call it in a
    worker thread."""

    MAX_BYTES = 1_000_000

    def __init__(self, url: str, auth: Auth) -> None:
        if https_url(url) is None:  # the settings' one rule for AUTH_JWKS_URL; ValueError
            raise ValueError("not an https:// URL: it is empty")
        self._url = url
        self._timeout = auth.timeout_seconds
        context = ssl.create_default_context(cafile=auth.jwks_ca_file)
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _NoRedirects()
        )

    def __call__(self) -> Fetched:
        deadline = time.monotonic() + self._timeout
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})  # noqa: S310 (https only)
        try:
            response = self._opener.open(request, timeout=self._timeout)
        except urllib.error.HTTPError as exc:  # a redirect or an error status: its body unread
            exc.close()
            raise
        with response:
            body = bytearray()
            # One system call per read, each within the socket's timeout: a provider that
            # trickles its answer meets the deadline between two reads.
            while chunk := response.read1(64 * 1024):
                body += chunk
                if len(body) > self.MAX_BYTES:
                    raise ValueError(f"the document is larger than {self.MAX_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the document took over {self._timeout} s to arrive")
            return Fetched(json.loads(body), _max_age(response.headers.get("Cache-Control")))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: a 3xx answer is an error (urllib.error.HTTPError)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Authenticator:
    """Turns an Authorization header into a Principal, or raises Unauthorized."""

    def __init__(
        self,
        keys: KeySource,
        auth: Auth,
        *,
        clock: Clock = SYSTEM,
        cache_bytes: int = 4 * 1024 * 1024,  # the bytes of the tokens remembered
    ) -> None:
        self._keys = keys
        self._auth = auth
        self._verified: TLRUCache[str, _Verified] = TLRUCache(
            cache_bytes,
            ttu=lambda _token, verified, _now: verified.expires + auth.leeway_seconds,
            timer=clock.wall,  # `exp` is a date
            getsizeof=lambda verified: verified.size,
        )
        # A key no longer trusted: every token is verified again, so none signed with it passes.
        keys.watch(self._verified.clear)

    async def refresh_keys(self, stopping: asyncio.Event) -> None:
        """Keep the signing keys current until `stopping` is set: a worker for a Supervisor."""
        await self._keys.run(stopping)

    async def principal(self, authorization: str | None) -> Principal:
        """The caller named by `Authorization: Bearer <token>`."""
        if authorization is None:
            raise Unauthorized("Send an access token: Authorization: Bearer <token>.", error=None)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "The Authorization header must be: Bearer <token>.", error="invalid_request"
            )
        try:
            return self._verified[token].principal
        except KeyError:
            pass  # never verified, forgotten, or expired
        return await self._verify(token)

    async def _verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized("The token is too long.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("The token is not a JWT.") from None
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized(f"Tokens must be signed with one of {', '.join(ALGORITHMS)}.")
        if self._auth.require_at_jwt and not _is_access_token(header.get("typ")):
            raise Unauthorized("Send an access token: its header's typ must be at+jwt (RFC 9068).")
        kid = header.get("kid")
        key = await self._keys.key(kid if isinstance(kid, str) else None)
        if header["alg"] != algorithm_of(key):
            raise Unauthorized("The token's algorithm does not match its key.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._auth.audience,
                issuer=self._auth.issuer,
                leeway=self._auth.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            reason = str(exc).rstrip(".")[:200] or type(exc).__name__
            raise Unauthorized(
                _REFUSED.get(type(exc), f"The token is not valid ({reason}).")
            ) from None
        if self._auth.allowed_clients:
            client = claims["client_id"] if "client_id" in claims else claims.get("azp")
            if not isinstance(client, str) or client not in self._auth.allowed_clients:
                raise Unauthorized("The token was issued to a client this service does not accept.")
        scopes = _words(claims.get("scope")) | _words(claims.get("scp"))
        admin = self._auth.admin_claim
        if admin is not None and _holds(_claim(claims, admin), self._auth.admin_role):
            scopes |= {ADMIN_SCOPE}
        user = _user_id(claims.get(self._auth.user_claim))
        principal = Principal(str(claims["sub"]), user, scopes)
        # Requests that missed at the same moment each verify, and each store here: the cache
        # counts a token's bytes once however often it is stored.
        self._verified[token] = _Verified(principal, float(claims["exp"]), len(token))
        return principal


def _is_access_token(typ: Any) -> bool:
    """Whether a header's `typ` names an RFC 9068 access token (section 4: `at+jwt`, or the full
    media type `application/at+jwt`; media types compare without regard to case)."""
    return isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt")


def _words(value: Any) -> frozenset[str]:
    """The scopes a `scope` or `scp` claim grants: a space-separated string (RFC 8693 section
    4.2) or a list of them (as Entra ID and Okta send `scp`); anything else grants none."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(word for item in value if isinstance(item, str) for word in item.split())
    return frozenset()


def _claim(claims: dict[str, Any], path: str) -> Any:
    """The claim named `path`: a top-level claim of that very name (a namespaced one such as
    `https://shop.example/roles` has dots), else the path's parts one object inside another
    (`realm_access.roles`); None if there is no such claim."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _holds(value: Any, role: str) -> bool:
    """Whether a role or group claim grants `role`: a list holding it, or that very string."""
    return value == role or (isinstance(value, list) and role in value)


class _Verified(NamedTuple):
    """A verified token's caller, its `exp` and its size (what it costs the cache)."""

    principal: Principal
    expires: float
    size: int


_CANONICAL_ID = re.compile(r"[1-9][0-9]{0,18}")
# What some reader could take for a number: signs, blanks, leading zeros, `_` separators,
# decimals, exponents, digits of other scripts.
_NUMBER_LIKE = re.compile(r"\s*[+-]?[\d_.]*\d[\d_.]*(?:[eE][+-]?\d+)?\s*")


def _user_id(value: Any) -> int | None:
    """The user id a claim names: a JSON integer, or a canonical decimal string (ASCII digits,
    no sign, blanks or leading zeros), from 1 to 2**63-1. A value that reads as a number in any
    other spelling ("007", "+7", " 7", "7.0", "0", a number out of range) is refused, so that two
    spellings never name one customer; anything else (a service's name, a UUID) names no
    customer (None)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if _CANONICAL_ID.fullmatch(value) and int(value) <= MAX_ID:
            return int(value)
        if _NUMBER_LIKE.fullmatch(value) is None:
            return None
    elif isinstance(value, int) and 1 <= value <= MAX_ID:
        return value
    elif not isinstance(value, int | float):
        return None
    raise Unauthorized(
        f"The token's user id must be a decimal from 1 to {MAX_ID} without sign, blanks "
        "or leading zeros."
    )


_REFUSED: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "The token has expired.",
    jwt.ImmatureSignatureError: "The token is not valid yet.",
    jwt.InvalidAudienceError: "The token is for another audience.",
    jwt.InvalidIssuerError: "The token is from another issuer.",
    jwt.InvalidSignatureError: "The token's signature does not verify.",
}


# Per accepted algorithm: how its public keys become a JWK, and that JWK's RFC 7638 members.
_JWK_OF: dict[str, tuple[Callable[..., dict[str, Any]], tuple[str, ...]]] = {
    "RS256": (RSAAlgorithm.to_jwk, ("e", "kty", "n")),
    "ES256": (ECAlgorithm.to_jwk, ("crv", "kty", "x", "y")),
    "EdDSA": (OKPAlgorithm.to_jwk, ("crv", "kty", "x")),
}


def algorithm_of(public_key: Any) -> str | None:
    """The one algorithm a key verifies: RS256 for RSA, ES256 for EC P-256, EdDSA for Ed25519."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ES256" if isinstance(public_key.curve, ec.SECP256R1) else None
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return None


def thumbprint(public_key: Any) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256, base64url): its `kid`."""
    algorithm = algorithm_of(public_key)
    if algorithm is None:
        raise ValueError("not an RSA, EC P-256 or Ed25519 public key")
    to_jwk, members = _JWK_OF[algorithm]
    jwk = to_jwk(public_key, as_dict=True)
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64url_encode(hashlib.sha256(canonical.encode()).digest()).decode()


def from_settings(settings: Settings) -> Authenticator:
    """The authenticator the settings describe: JWKS if AUTH_JWKS_URL is set, else the key file."""
    keys: KeySource
    if settings.auth.jwks_url:
        try:
            keys = Jwks(settings.auth.jwks_url, settings.auth)
        except OSError as exc:  # the CA file is missing or holds no certificate (ssl.SSLError)
            raise ConfigError(f"AUTH_JWKS_CA_FILE={settings.auth.jwks_ca_file}: {exc}") from exc
    else:
        path = Path(settings.auth.public_key_file)
        try:
            keys = StaticKey(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"AUTH_PUBLIC_KEY_FILE={path}: {exc} (`make up` or `shop dev-key` writes the "
                "development key; or set AUTH_JWKS_URL)"
            ) from exc
    return Authenticator(keys, settings.auth)


def authorization(scope: Scope) -> str | None:
    """The request's Authorization header; Unauthorized if it is sent more than once."""
    found = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(found) > 1:
        raise Unauthorized("Send one Authorization header.", error="invalid_request")
    return found[0].decode("latin-1") if found else None


# Declares the scheme in the OpenAPI document (/docs gets "Authorize"); the header is read and
# verified by `caller` below, with the problem+json answers of this module.
bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="An access token (RFC 9068 JWT); `shop token` makes one for the local stack.",
)


def caller(auth: Authenticator) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI security dependency: the verified caller, holding every scope the route
    declares (`Security(caller(auth), scopes=[...])`)."""

    async def verified(
        request: Request, scopes: SecurityScopes, _declared: object = Depends(bearer)
    ) -> Principal:
        principal = await auth.principal(authorization(request.scope))
        for scope in scopes.scopes:
            principal.require(scope)
        return principal

    return verified
