"""A service that takes its signing keys from an identity provider's JWKS, over TLS from a
throw-away CA (AUTH_JWKS_CA_FILE): a key the provider removes is refused within the refresh
interval, and an ID token is refused there as with a key file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_ENV, TOKENS
from tests.identity_provider import Certificates, JwksServer, jwk
from tests.support import ServiceProcess, free_port
from tests.tokens import Issuer

pytestmark = pytest.mark.e2e

MAX_AGE = 2  # the provider's Cache-Control max-age, in seconds
NO_SUCH_PRODUCT = f"/products/{2**62}"  # a valid token gets 404 here, a refused one 401
ROTATED = Issuer()  # a second key the provider publishes, then removes


@pytest.fixture
async def jwks_service(
    database: object, kafka_topics: None, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, JwksServer]]:
    """A product service (one worker) trusting the keys the provider serves, and the provider."""
    certificates = Certificates(tmp_path / "tls")
    with JwksServer(certificates) as provider:
        provider.keys = [jwk(TOKENS), jwk(ROTATED)]
        provider.max_age = MAX_AGE
        port = free_port()
        env = {
            **TEST_ENV,
            "PRODUCT_SERVICE_PORT": str(port),
            "WORKERS": "1",
            "OUTBOX_RELAY_ENABLED": "false",  # the session's product service relays
            "AUTH_JWKS_URL": provider.url,
            "AUTH_JWKS_CA_FILE": str(certificates.ca_file),
            "AUTH_JWKS_REFRESH_SECONDS": "1",
        }
        service = ServiceProcess("products", port=port, env=env, log_path=tmp_path / "log")
        await service.start()
        try:
            async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
                yield client, provider
        finally:
            assert service.stop(), f"the service did not stop cleanly; see {service.log_path}"


def _writer(issuer: Issuer) -> dict[str, str]:
    return issuer.bearer("catalogue", ["products:write"])


async def test_a_key_removed_from_the_jwks_is_refused_within_the_refresh_interval(
    jwks_service: tuple[httpx.AsyncClient, JwksServer],
) -> None:
    client, provider = jwks_service
    remembered = _writer(ROTATED)
    assert (await client.delete(NO_SUCH_PRODUCT, headers=remembered)).status_code == 404
    assert (await client.delete(NO_SUCH_PRODUCT, headers=_writer(TOKENS))).status_code == 404
    provider.keys = [jwk(TOKENS)]
    removed_at = time.monotonic()
    while (status := (await client.delete(NO_SUCH_PRODUCT, headers=remembered)).status_code) != 401:
        assert status == 404
        assert time.monotonic() - removed_at < MAX_AGE + 3, "the removed key is still trusted"
        await asyncio.sleep(0.1)
    refused_after = time.monotonic() - removed_at
    fresh = await client.delete(NO_SUCH_PRODUCT, headers=_writer(ROTATED))
    assert fresh.status_code == 401  # nor is a new token signed with it accepted
    assert "key id" in fresh.json()["detail"]
    assert (await client.delete(NO_SUCH_PRODUCT, headers=_writer(TOKENS))).status_code == 404
    # Fetched at the start and about once per max-age since, not once per request.
    assert provider.fetches <= 2 + refused_after / MAX_AGE + 1, provider.fetches


async def test_an_id_token_gets_401_from_a_service_on_a_jwks(
    jwks_service: tuple[httpx.AsyncClient, JwksServer],
) -> None:
    client, _provider = jwks_service
    id_token = TOKENS.id_token("catalogue", scope="products:write")
    refused = await client.delete(NO_SUCH_PRODUCT, headers={"Authorization": f"Bearer {id_token}"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert (await client.delete(NO_SUCH_PRODUCT, headers=_writer(TOKENS))).status_code == 404
