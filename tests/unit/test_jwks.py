"""Signing keys from an identity provider's JWKS: fetched over TLS only, never through a
redirect, within a timeout, and again for an unknown `kid` at most once per interval."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shop.access.verifier import Authenticator, HttpsDownload, Jwks, Unauthorized, from_settings
from shop.settings import Auth, ConfigError, load_settings
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
    return Auth(issuer=ISSUER, audience=AUDIENCE, leeway_seconds=5, **settings)


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
