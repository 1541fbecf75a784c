"""Signing keys from an identity provider's JWKS: fetched over TLS only, never through a
redirect, within a timeout, and again for an unknown `kid` at most once per interval."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from shop.access.verifier import (
    Authenticator,
    Fetched,
    HttpsDownload,
    Jwks,
    Unauthorized,
    _max_age,
    from_settings,
)
from shop.settings import Auth, ConfigError, load_settings
from shop.supervision import Supervisor
from tests.clock import FakeClock
from tests.identity_provider import Certificates, JwksServer, jwk
from tests.tokens import AUDIENCE, ISSUER, Issuer

issuer = Issuer()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def identity_provider(certificates: Certificates) -> Iterator[JwksServer]:
    """A JWKS endpoint over TLS, serving the test issuer's key."""
    with JwksServer(certificates) as server:
        server.keys = [jwk(issuer)]
        yield server


def _auth(**settings: Any) -> Auth:
    return Auth(**{"issuer": ISSUER, "audience": AUDIENCE, "leeway_seconds": 5, **settings})


def _principal(auth: Authenticator, token: str) -> Any:
    return asyncio.run(auth.principal(f"Bearer {token}"))


def test_jwks_keys_are_fetched_once_and_again_for_a_new_kid_at_most_once_per_interval(
    identity_provider: JwksServer, certificates: Certificates
) -> None:
    rotated = Issuer()
    clock = FakeClock()
    settings = _auth(
        timeout_seconds=2, jwks_refresh_seconds=1.0, jwks_ca_file=str(certificates.ca_file)
    )
    keys = Jwks(identity_provider.url, settings, clock=clock)
    auth = Authenticator(keys, settings)

    async def scenario() -> None:
        await auth.principal(issuer.bearer(1)["Authorization"])
        await auth.principal(issuer.bearer(2)["Authorization"])
        assert identity_provider.fetches == 1
        # A token from a key the IdP does not (yet) publish: fetched once more, then refused
        # without asking again within the interval.
        for _ in range(5):
            with pytest.raises(Unauthorized, match="key id"):
                await auth.principal(rotated.bearer(3)["Authorization"])
        assert identity_provider.fetches == 1
        identity_provider.keys = [jwk(issuer), jwk(rotated)]
        clock.now += 1.1
        principal = await auth.principal(rotated.bearer(3)["Authorization"])
        assert principal.user_id == 3
        assert identity_provider.fetches == 2

    asyncio.run(scenario())


def _refused_fetch(keys: Jwks, match: str = "could not be fetched") -> None:
    auth = Authenticator(keys, _auth())
    with pytest.raises(Unauthorized, match=match):
        _principal(auth, issuer.token(1))


def test_a_provider_whose_certificate_the_service_does_not_trust_is_not_asked(
    identity_provider: JwksServer, tmp_path: Path
) -> None:
    _refused_fetch(Jwks(identity_provider.url, _auth()))  # the system's CAs: not the test CA
    stranger = Certificates(tmp_path / "other", common_name="another CA")
    _refused_fetch(Jwks(identity_provider.url, _auth(jwks_ca_file=str(stranger.ca_file))))
    assert identity_provider.fetches == 0  # refused in the handshake, before the request


def test_a_redirect_is_not_followed(
    identity_provider: JwksServer, certificates: Certificates
) -> None:
    with JwksServer(certificates) as elsewhere:
        elsewhere.keys = [jwk(issuer)]
        identity_provider.redirect_to = elsewhere.url
        _refused_fetch(Jwks(identity_provider.url, _auth(jwks_ca_file=str(certificates.ca_file))))
        assert identity_provider.fetches == 1
        assert elsewhere.fetches == 0


def test_only_https_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml
    for url in (
        "http://idp.example/jwks",
        "HTTP://idp.example/jwks",
        "ftp://idp.example/k",
        "https:///jwks",
        "idp.example/jwks",
    ):
        with pytest.raises(ConfigError, match=r"AUTH_JWKS_URL: .*https://"):
            load_settings(auth_jwks_url=url)
        with pytest.raises(ValueError, match="https://"):
            HttpsDownload(url, Auth())
    assert load_settings(auth_jwks_url="https://idp.example/jwks").auth.jwks_url
    assert load_settings(auth_jwks_url="HTTPS://idp.example/jwks").auth.jwks_url
    assert load_settings(auth_jwks_url="").auth.jwks_url is None  # compose passes an empty one


def test_a_ca_file_that_is_missing_or_holds_no_certificate_is_a_config_error(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("not a certificate\n")
    for ca_file in (tmp_path / "absent.pem", garbage):
        settings = load_settings(
            auth_jwks_url="https://idp.example/jwks", auth_jwks_ca_file=str(ca_file)
        )
        with pytest.raises(ConfigError, match="AUTH_JWKS_CA_FILE"):
            from_settings(settings)


def test_an_unreachable_identity_provider_is_a_401_not_a_crash() -> None:
    keys = Jwks("https://127.0.0.1:9/jwks", _auth(timeout_seconds=0.5, jwks_refresh_seconds=60))
    started = time.monotonic()
    _refused_fetch(keys)
    assert time.monotonic() - started < 5


def test_a_provider_that_accepts_and_never_answers_is_given_up_on_after_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"https://127.0.0.1:{silent.getsockname()[1]}/jwks"
        keys = Jwks(url, _auth(timeout_seconds=0.5))
        started = time.monotonic()
        _refused_fetch(keys)
        assert time.monotonic() - started < 2


def test_a_provider_that_trickles_its_answer_is_given_up_on_after_the_timeout(
    identity_provider: JwksServer, certificates: Certificates
) -> None:
    identity_provider.trickle_seconds = 0.05  # never silent for a socket timeout
    settings = _auth(timeout_seconds=0.5, jwks_ca_file=str(certificates.ca_file))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        HttpsDownload(identity_provider.url, settings)()
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("header", "max_age"),
    [
        (None, None),
        ("", None),
        ("max-age=120", 120),
        ("public, max-age=120, must-revalidate", 120),
        ("MAX-AGE=120", 120),
        ('max-age="120"', 120),
        ("no-store", 0),
        ("no-cache, max-age=100", 0),
        ('no-cache="Set-Cookie"', 0),
        ("max-age=abc", None),
        ("max-age=-1", None),
        ("max-age=1.5", None),
        ("s-maxage=50", None),
        ("max-age=30, max-age=90", 30),
    ],
)
def test_the_max_age_is_read_from_cache_control(header: str | None, max_age: float | None) -> None:
    assert _max_age(header) == max_age


def test_the_download_reads_the_max_age_of_the_response(
    identity_provider: JwksServer, certificates: Certificates
) -> None:
    download = HttpsDownload(identity_provider.url, _auth(jwks_ca_file=str(certificates.ca_file)))
    assert download() == Fetched({"keys": [jwk(issuer)]}, None)
    identity_provider.max_age = 2
    assert download().max_age == 2


class _Provider:
    """A fake download: `keys` (or another `document`) with `max_age`, or `failure` raised;
    `asked` holds when it was called (on the test's clock)."""

    def __init__(self, clock: FakeClock, *keys: dict[str, Any], max_age: float | None = 60) -> None:
        self.clock = clock
        self.keys = list(keys)
        self.max_age = max_age
        self.failure: Exception | None = None
        self.document: Any = None
        self.asked: list[float] = []

    def __call__(self) -> Fetched:
        self.asked.append(self.clock.now)
        if self.failure is not None:
            raise self.failure
        return Fetched(self.document or {"keys": list(self.keys)}, self.max_age)


class _Clock(FakeClock):
    """A FakeClock that ends a worker's run (sets its `stopping`) at its `until`-th sleep."""

    until = 1

    async def sleep(self, seconds: float, stopping: asyncio.Event | None = None) -> None:
        await super().sleep(seconds, stopping)
        if stopping is not None and len(self.slept) >= self.until:
            stopping.set()


async def _rounds(keys: Jwks, clock: _Clock, rounds: int = 1) -> None:
    """Run the refresh worker until it has gone to sleep `rounds` more times."""
    clock.until = len(clock.slept) + rounds
    await keys.run(asyncio.Event())


def _jwks(provider: _Provider, clock: FakeClock, **settings: Any) -> Jwks:
    return Jwks("https://idp.example/jwks", _auth(**settings), clock=clock, download=provider)


def _trusting(
    *published: dict[str, Any], **settings: Any
) -> tuple[_Clock, _Provider, Jwks, Authenticator]:
    """A provider publishing `published`, its refreshed key set, and an Authenticator over it,
    all on one clock."""
    clock = _Clock()
    provider = _Provider(clock, *published)
    keys = _jwks(provider, clock, **settings)
    return clock, provider, keys, Authenticator(keys, _auth(), clock=clock)


async def test_the_keys_are_fetched_again_after_their_max_age_within_the_bounds() -> None:
    clock = _Clock()
    provider = _Provider(clock, jwk(issuer))
    keys = _jwks(
        provider,
        clock,
        jwks_refresh_seconds=10,
        jwks_default_max_age_seconds=300,
        jwks_max_age_seconds=600,
    )
    script: list[float | Exception | None] = [120, None, 3600, 0, OSError("down"), 30]
    for step in script:
        provider.failure = step if isinstance(step, Exception) else None
        provider.max_age = None if isinstance(step, Exception) else step
        await _rounds(keys, clock)
    # max-age 120; none: the default; 3600: capped; 0: at least the refresh interval; a failed
    # fetch: tried again after the refresh interval, with the keys there were; max-age 30.
    assert clock.slept == [120, 300, 600, 10, 10, 30]
    assert provider.asked == [0, 120, 420, 1020, 1030, 1040]
    assert await keys.key(jwk(issuer)["kid"]) is not None


async def test_a_key_the_provider_removed_is_refused_once_the_keys_are_due_again() -> None:
    other = Issuer()
    clock, provider, keys, auth = _trusting(jwk(issuer), jwk(other), jwks_refresh_seconds=1)
    kept, removed = issuer.bearer(1)["Authorization"], other.bearer(2)["Authorization"]
    assert (await auth.principal(kept)).user_id == 1  # the first token fetches the keys
    assert (await auth.principal(removed)).user_id == 2
    provider.keys = [jwk(issuer)]
    clock.now = 59
    await _rounds(keys, clock)  # sleeps the last second: not fetched yet
    assert provider.asked == [0]
    assert (await auth.principal(removed)).user_id == 2  # remembered, and its key still known
    await _rounds(keys, clock)  # due: fetched, and the key is gone
    assert provider.asked == [0, 60]
    with pytest.raises(Unauthorized, match="key id"):
        await auth.principal(removed)
    assert (await auth.principal(kept)).user_id == 1


async def test_verified_tokens_are_kept_while_no_key_is_withdrawn() -> None:
    clock, provider, keys, auth = _trusting(jwk(issuer))
    await _rounds(keys, clock)
    await auth.principal(issuer.bearer(1)["Authorization"])
    await auth.principal(issuer.bearer(2)["Authorization"])
    provider.keys = [jwk(issuer), jwk(Issuer())]  # a key added (a rotation beginning)
    provider.failure = None
    await _rounds(keys, clock, rounds=2)
    assert len(provider.asked) == 3
    assert len(auth._verified) == 2


async def test_another_key_under_a_known_kid_is_a_withdrawn_key() -> None:
    clock, provider, keys, auth = _trusting(jwk(issuer))
    token = issuer.bearer(1)["Authorization"]
    await _rounds(keys, clock)
    assert (await auth.principal(token)).user_id == 1
    provider.keys = [{**jwk(Issuer()), "kid": jwk(issuer)["kid"]}]
    await _rounds(keys, clock)
    with pytest.raises(Unauthorized, match="signature"):
        await auth.principal(token)


async def test_a_single_key_without_a_kid_replaced_by_another_is_a_withdrawn_key() -> None:
    kidless = {k: v for k, v in jwk(issuer).items() if k != "kid"}
    clock, provider, keys, auth = _trusting(kidless)
    claims = jwt.decode(issuer.token(1), options={"verify_signature": False})
    signing = serialization.load_pem_private_key(issuer.signing_pem, password=None)
    kidless_token = jwt.encode(claims, signing, algorithm="EdDSA", headers={"typ": "at+jwt"})  # type: ignore[arg-type]
    token = f"Bearer {kidless_token}"
    await _rounds(keys, clock)
    assert (await auth.principal(token)).user_id == 1
    provider.keys = [{k: v for k, v in jwk(Issuer()).items() if k != "kid"}]
    await _rounds(keys, clock)
    with pytest.raises(Unauthorized, match="signature"):
        await auth.principal(token)


@pytest.mark.parametrize(
    "published",
    [
        [],
        [{**jwk(issuer), "use": "enc"}],  # an encryption key is no signing key
        [{**jwk(issuer), "alg": "RS256"}],  # an algorithm that does not fit the key
        [{"kty": "oct", "k": "c2VjcmV0", "kid": jwk(issuer)["kid"]}],  # an HMAC secret
    ],
)
async def test_a_set_without_a_usable_signing_key_trusts_none(published: list[Any]) -> None:
    clock, provider, keys, auth = _trusting(jwk(issuer))
    token = issuer.bearer(1)["Authorization"]
    await _rounds(keys, clock)
    assert (await auth.principal(token)).user_id == 1
    provider.keys = published
    await _rounds(keys, clock)
    with pytest.raises(Unauthorized):
        await auth.principal(token)


@pytest.mark.parametrize("document", [{"keys": "none"}, {"jwks": []}, ["keys"], "<html>"])
async def test_an_answer_that_is_no_key_set_keeps_the_keys_there_were(document: Any) -> None:
    clock, provider, keys, auth = _trusting(jwk(issuer))
    token = issuer.bearer(1)["Authorization"]
    await _rounds(keys, clock)
    await auth.principal(token)
    provider.document = document
    await _rounds(keys, clock)
    assert clock.slept[-1] == keys._auth.jwks_refresh_seconds  # tried again sooner
    assert (await auth.principal(token)).user_id == 1
    assert len(auth._verified) == 1


async def test_the_refresh_worker_is_supervised_and_stops_with_the_service() -> None:
    provider = _Provider(FakeClock(), jwk(issuer))
    auth = Authenticator(Jwks("https://idp.example/jwks", _auth(), download=provider), _auth())
    supervisor = Supervisor()
    supervisor.start("signing-keys", auth.refresh_keys)
    for _ in range(100):
        if provider.asked:
            break
        await asyncio.sleep(0.01)
    assert len(provider.asked) == 1  # fetched at start, then waiting for the max-age
    started = time.monotonic()
    await supervisor.stop(timeout=5)
    assert time.monotonic() - started < 1


async def test_two_requests_waiting_on_one_key_fetch_count_the_tokens_bytes_once() -> None:
    """The token cache's budget: a token verified by two requests that waited on one JWKS
    fetch costs its bytes once (counted twice, the budget below would have no room for the
    third token and the first would be forgotten), and expired tokens give their bytes back."""
    clock = FakeClock()
    provider = _Provider(clock, jwk(issuer), max_age=60)
    fetched = threading.Event()

    def slow_download() -> Fetched:
        fetched.wait(5)  # both requests wait on this fetch
        return provider()

    keys = Jwks("https://idp.example/jwks", _auth(), clock=clock, download=slow_download)
    first, second, third = (issuer.token(user, ttl=60) for user in (11, 12, 13))
    budget = len(first) + len(second) + len(third)
    auth = Authenticator(keys, _auth(leeway_seconds=0), clock=clock, cache_bytes=budget)
    together = [asyncio.create_task(auth.principal(f"Bearer {first}")) for _ in range(2)]
    await asyncio.sleep(0.05)  # both are waiting now: one on the fetch, one on its lock
    fetched.set()
    assert [p.user_id for p in await asyncio.gather(*together)] == [11, 11]
    assert provider.asked == [0]
    for token in (second, third):
        await auth.principal(f"Bearer {token}")
    assert all(token in auth._verified for token in (first, second, third))
    assert auth._verified.currsize == budget
    clock.now += 61  # all three expire
    fourth = issuer.token(14, ttl=3600)
    await auth.principal(f"Bearer {fourth}")
    assert auth._verified.currsize == len(fourth)
    assert list(auth._verified) == [fourth]
